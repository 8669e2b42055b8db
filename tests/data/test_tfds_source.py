"""tfds sources through the grain pipeline, offline (tfds mock data), and the config wiring."""
import io

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxtok.data import pipeline
from jaxtok.data import tfds_source


def _mock():
  return tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE)


def test_decode_image_and_record():
  img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), np.uint8)
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="PNG")
  np.testing.assert_array_equal(tfds_source.decode_image(buf.getvalue()), img)
  np.testing.assert_array_equal(tfds_source.decode_image(img[..., :1]), img[..., :1].repeat(3, -1))
  rec = tfds_source.decode_record({"image": img, "label": np.int64(4)})
  assert rec["label"].dtype == np.int32 and int(rec["label"]) == 4
  with pytest.raises(ValueError, match="'image' feature"):
    tfds_source.decode_record({"img": img})
  with pytest.raises(ValueError, match="tfds dataset name"):
    tfds_source.source("", split="train")


def test_tfds_source_pipeline_resumes_exactly():
  with _mock():
    src = tfds_source.source("cifar10", split="train")
    assert len(src) == 12
    make = lambda: pipeline.Pipeline(src, batch_size=4, seed=1, shard=(0, 1),
                                     preprocess=pipeline.image_preprocess(16))
    p = make()
    first = [next(p) for _ in range(2)]
    assert first[0]["image"].shape == (4, 16, 16, 3) and first[0]["label"].shape == (4,)
    state = p.get_state()
    rest = [next(p) for _ in range(4)]
    q = make()
    q.set_state(state)
    for a, b in zip(rest, [next(q) for _ in range(4)]):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])


def test_from_config_tfds():
  cfg = ml_collections.ConfigDict(dict(source="tfds", name="cifar10", split="train",
                                       heldout_split="test", image_size=16, batch_size=8, heldout=3))
  with _mock():
    data, held = pipeline.from_config(cfg, seed=0, process_index=1, process_count=2)
    b = next(data)
    assert b.shape == (4, 16, 16, 3) and b.dtype == np.float32 and held.shape == (3, 16, 16, 3)
    state = data.get_state()
    nxt = next(data)
    again, _ = pipeline.from_config(cfg, seed=0, process_index=1, process_count=2)
    again.set_state(state)
    np.testing.assert_array_equal(next(again), nxt)
  cfg.name = ""
  with pytest.raises(ValueError, match="config.data.name"):
    pipeline.from_config(cfg, seed=0)
