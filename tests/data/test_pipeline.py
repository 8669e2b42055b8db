"""grain pipeline: exact resume from saved state, per-process shards, per-epoch shuffles, errors."""
import grain
import numpy as np
import pytest

from jaxtok.data import photos
from jaxtok.data import pipeline
from jaxtok.data import preprocess as pp


def _source(n=23):
  rng = np.random.default_rng(0)
  return pipeline.ArraySource(image=rng.integers(0, 256, (n, 10, 12, 3), np.uint8),
                              label=np.arange(n, dtype=np.int32))


def _crop_flip(record, rng):
  image = pp.random_flip(pp.random_crop(record["image"], 6, rng), rng)
  return {"image": pp.to_float(image), "label": record["label"]}


def _make(**kw):
  args = dict(batch_size=4, seed=7, preprocess=_crop_flip, shard=(0, 1))
  args.update(kw)
  return pipeline.Pipeline(_source(), **args)


def _equal(a, b):
  return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in ("image", "label"))


def test_resume_from_state_is_exact():
  p = _make()
  first = [next(p) for _ in range(3)]
  assert first[0]["image"].shape == (4, 6, 6, 3) and first[0]["image"].dtype == np.float32
  state = p.get_state()
  rest = [next(p) for _ in range(8)]  # crosses the epoch boundary (23 records, batches of 4)
  fresh = _make()
  fresh.set_state(state)
  assert _equal(rest, [next(fresh) for _ in range(8)])
  # The same seed gives the same stream, another seed another one; threads never change it.
  again = _make(num_threads=0)
  assert _equal(first, [next(again) for _ in range(3)])
  other = _make(seed=8)
  assert not _equal(first[:1], [next(other)])


def test_shards_are_disjoint_and_epochs_reshuffle():
  labels = []
  for i in range(2):
    p = _make(shard=(i, 2), shuffle=False, num_epochs=1, batch_size=1, preprocess=None)
    labels.append([int(b["label"][0]) for b in p])
  # 23 records trimmed to 22; process i keeps i, i + 2, ...
  assert labels[0] == list(range(0, 22, 2)) and labels[1] == list(range(1, 22, 2))
  p = _make(shard=(1, 2), num_epochs=2, batch_size=11, preprocess=None)
  e1, e2 = [b["label"].tolist() for b in p]
  assert sorted(e1) == sorted(e2) == list(range(1, 22, 2)) and e1 != e2
  # grain's shard options are accepted (one process here).
  p = _make(shard=grain.sharding.ShardByJaxProcess(drop_remainder=True))
  assert (p.shard_index, p.shard_count, p.shard_size) == (0, 1, 23)


def test_photo_source_through_the_pipeline():
  rng = np.random.default_rng(1)
  src = photos.PhotoSource([rng.integers(0, 256, (20 + i, 30, 3), np.uint8) for i in range(5)])
  pre = pipeline.image_preprocess(8, augment="random_crop")
  p = pipeline.Pipeline(src, batch_size=3, seed=0, preprocess=pre, shard=(0, 1))
  b = next(p)
  assert b["image"].shape == (3, 8, 8, 3) and b["label"].dtype == np.int32
  assert 0.0 <= b["image"].min() and b["image"].max() <= 1.0


def test_image_preprocess_modes_and_eval_images():
  img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), np.uint8)
  rec = {"image": img, "label": 3}
  out = pipeline.image_preprocess(10, augment="center_crop", flip=False)(rec, np.random.default_rng(0))
  expected = pp.center_crop(pp.resize_short(img, 10), 10) / 255.0
  np.testing.assert_allclose(out["image"], expected, rtol=1e-6)
  assert int(out["label"]) == 3
  out = pipeline.image_preprocess(10, augment="random_resized_crop")(rec, np.random.default_rng(0))
  assert out["image"].shape == (10, 10, 3)
  held = pipeline.eval_images(pipeline.ArraySource(image=img[None].repeat(3, 0)), image_size=10, count=5)
  assert held.shape == (3, 10, 10, 3)
  np.testing.assert_allclose(held[0], expected, rtol=1e-6)
  # float images in [0, 1] keep their range.
  fl = pipeline.image_preprocess(10, augment="center_crop", flip=False)(
      {"image": img / 255.0}, np.random.default_rng(0))
  np.testing.assert_allclose(fl["image"], expected, atol=1e-6)


def test_errors():
  with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
    _make(batch_size=0)
  with pytest.raises(ValueError, match="shard must satisfy"):
    _make(shard=(2, 2))
  with pytest.raises(TypeError, match="source must support"):
    pipeline.Pipeline(object(), batch_size=1, seed=0, shard=(0, 1))
  with pytest.raises(ValueError, match="fewer than the 30 shards"):
    _make(shard=(0, 30))
  with pytest.raises(ValueError, match="same length"):
    pipeline.ArraySource(image=np.zeros((3, 2)), label=np.zeros(4))
  with pytest.raises(ValueError, match="augment must be one of"):
    pipeline.image_preprocess(8, augment="zoom")
  with pytest.raises(ValueError, match="config.data.source must be one of"):
    pipeline.from_config({"source": "imagenet", "image_size": 8, "batch_size": 2}, seed=0)
  with pytest.raises(TypeError, match="state must be a dict"):
    _make().set_state([1])
