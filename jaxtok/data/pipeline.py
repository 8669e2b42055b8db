"""Deterministic, resumable input pipelines on grain, and the data a training run reads.

`Pipeline` wraps a grain MapDataset over any random-access source (anything with `__len__` and
`__getitem__`: `tfds.data_source(...)`, `ArraySource`, `photos.PhotoSource`):

  source -> this process's shard -> shuffle(seed) -> repeat(num_epochs) -> random_map(preprocess)
         -> batch(batch_size) -> iterator

  * sharding: process p of n keeps the records p, p + n, p + 2n, ... of the source after trimming it
    to a multiple of n (every process sees as many records; grain's `ShardByJaxProcess` options, or
    an explicit (shard_index, shard_count), or the jax process by default);
  * shuffle: a global permutation of the shard, different in every epoch (grain combines the seed
    with the epoch), the same in every run with the same seed;
  * preprocess: `preprocess(record, rng) -> record` with an `np.random.Generator` that grain derives
    from (seed, element index), so augmentation is a pure function of the position in the stream;
  * state: `get_state()` is grain's iterator state (a small JSON-able dict, the next batch index);
    `set_state(state)` on a fresh pipeline built the same way continues exactly where the saved one
    stopped. The training loop saves it in every checkpoint.

`from_config(config.data, ...)` gives what `jaxtok.train.loop` reads: a local-batch iterator of
float32 images [b, S, S, 3] in [0, 1] with get_state / set_state, and held-out images:

  data.source = "photos"  the bundled photographs (`jaxtok.data.photos.PhotoCrops`), the default;
  data.source = "tfds"    a named tensorflow-datasets dataset (`data.name`, `data.split`,
                          `data.heldout_split`, optional `data.data_dir`) read with `tfds.data_source`
                          (`jaxtok.data.tfds_source`); train crops follow `data.augment`
                          ("random_crop": resize the short side to S then a random S x S crop,
                          "random_resized_crop": Inception crop, "center_crop"), plus a random
                          horizontal flip unless `data.flip` is False; held-out images are the first
                          `data.heldout` records of the held-out split, short side resized and
                          center-cropped.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from jaxtok.data import preprocess as pp

Preprocess = Callable[[Any, np.random.Generator], Any]
SOURCES = ("photos", "tfds")
AUGMENTS = ("random_crop", "random_resized_crop", "center_crop")


class ArraySource:
  """Random access over in-memory arrays: record i = {key: array[i] for each key}."""

  def __init__(self, **arrays: Any):
    if not arrays:
      raise ValueError("ArraySource needs at least one named array, e.g. ArraySource(image=x)")
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f"ArraySource arrays must have the same length, got {lengths}")
    self._arrays = {k: np.asarray(v) for k, v in arrays.items()}
    self._len = next(iter(lengths.values()))

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict:
    return {k: v[index] for k, v in self._arrays.items()}


class _Indexed:
  """Plain random access (`__len__`, `__getitem__` only) over a source, so grain never takes a
  batched-read path a source may implement differently."""

  def __init__(self, source: Any):
    if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
      raise TypeError(f"source must support len() and [index], got {type(source).__name__}")
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> Any:
    return self._source[int(index)]


def _shard(shard: Any) -> tuple[int, int]:
  if shard is None:
    import jax  # pylint: disable=g-import-not-at-top
    return jax.process_index(), jax.process_count()
  if hasattr(shard, "shard_index") and hasattr(shard, "shard_count"):
    if not getattr(shard, "drop_remainder", True):
      raise ValueError("shard options must have drop_remainder=True (equal shards keep processes in "
                       "step), got drop_remainder=False")
    index, count = int(shard.shard_index), int(shard.shard_count)
  else:
    try:
      index, count = (int(v) for v in shard)
    except (TypeError, ValueError):
      raise TypeError(f"shard must be None, grain ShardOptions or (shard_index, shard_count), got "
                      f"{shard!r}") from None
  if count < 1 or not 0 <= index < count:
    raise ValueError(f"shard must satisfy 0 <= shard_index < shard_count, got ({index}, {count})")
  return index, count


class Pipeline:
  """A resumable batch iterator over a random-access source (see the module docstring).

  Args:
    source: random-access source (len() and [i]).
    batch_size: examples per batch on this process.
    seed: shuffle and augmentation seed (0 <= seed < 2**32).
    preprocess: `fn(record, rng) -> record` (numpy), applied per example before batching.
    shard: None (this jax process of all processes), grain `ShardOptions` (e.g.
      `grain.sharding.ShardByJaxProcess(drop_remainder=True)`) or (shard_index, shard_count).
    shuffle: shuffle the shard (every epoch differently).
    num_epochs: passes over the shard; None repeats forever.
    drop_remainder: drop a last partial batch.
    num_threads, prefetch: grain read threads and prefetch buffer (the order never depends on them).
  """

  def __init__(self, source: Any, *, batch_size: int, seed: int,
               preprocess: Preprocess | None = None, shard: Any = None, shuffle: bool = True,
               num_epochs: int | None = None, drop_remainder: bool = True, num_threads: int = 2,
               prefetch: int = 8):
    import grain  # pylint: disable=g-import-not-at-top
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
      raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**32:
      raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    if num_epochs is not None and (not isinstance(num_epochs, int) or num_epochs < 1):
      raise ValueError(f"num_epochs must be None or a positive int, got {num_epochs!r}")
    index, count = _shard(shard)
    src = _Indexed(source)
    n = (len(src) // count) * count
    if n // count < 1:
      raise ValueError(f"the source has {len(src)} records, fewer than the {count} shards")
    ds = grain.MapDataset.source(src)[index:n:count].seed(int(seed))
    if shuffle:
      ds = ds.shuffle()
    ds = ds.repeat(num_epochs)
    if preprocess is not None:
      ds = ds.random_map(preprocess)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    self.dataset = ds
    self.shard_index, self.shard_count, self.shard_size = index, count, n // count
    self._read = grain.ReadOptions(num_threads=int(num_threads), prefetch_buffer_size=int(prefetch))
    self._iter = iter(ds.to_iter_dataset(self._read))

  def __iter__(self):
    return self

  def __next__(self) -> Any:
    return next(self._iter)

  def get_state(self) -> dict:
    """grain's iterator state (JSON-able): pass it to `set_state` of a pipeline built the same way."""
    return dict(self._iter.get_state())

  def set_state(self, state: dict) -> None:
    if not isinstance(state, dict):
      raise TypeError(f"state must be a dict from get_state(), got {type(state).__name__}")
    self._iter.set_state(dict(state))


class ImageBatches:
  """A Pipeline of {"image": float32 [b, S, S, 3], ...} batches seen as image arrays (loop input)."""

  def __init__(self, pipeline: Pipeline):
    self.pipeline = pipeline

  def __iter__(self):
    return self

  def __next__(self) -> np.ndarray:
    batch = next(self.pipeline)
    return np.asarray(batch["image"] if isinstance(batch, dict) else batch, np.float32)

  def get_state(self) -> dict:
    return self.pipeline.get_state()

  def set_state(self, state: dict) -> None:
    self.pipeline.set_state(state)


def image_preprocess(image_size: int, *, augment: str = "random_crop", flip: bool = True,
                     image_key: str = "image", label_key: str | None = "label") -> Preprocess:
  """A per-example `fn(record, rng) -> {"image": float32 [S, S, 3], "label": int32}` (tokenizer input).

  The record's image may be uint8 or float, grey or RGB(A), any size; encoded bytes are decoded.
  """
  if augment not in AUGMENTS:
    raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
  if not isinstance(image_size, int) or image_size < 1:
    raise ValueError(f"image_size must be a positive int, got {image_size!r}")

  def fn(record: Any, rng: np.random.Generator) -> dict:
    from jaxtok.data import tfds_source  # pylint: disable=g-import-not-at-top
    image = tfds_source.decode_image(record[image_key] if isinstance(record, dict) else record)
    scale = 255.0 if image.dtype == np.uint8 else 1.0
    if augment == "random_resized_crop":
      image = pp.random_resized_crop(image, image_size, rng)
    else:
      image = pp.resize_short(image, image_size)
      image = (pp.random_crop(image, image_size, rng) if augment == "random_crop"
               else pp.center_crop(image, image_size))
    if flip:
      image = pp.random_flip(image, rng)
    out = {"image": np.ascontiguousarray(_unit(image, scale))}
    if label_key is not None and isinstance(record, dict) and label_key in record:
      out["label"] = np.int32(record[label_key])
    return out

  return fn


def _unit(image: np.ndarray, scale: float) -> np.ndarray:
  """float32 in [0, 1]: image / scale, with scale 255 for images decoded as uint8 (resizing keeps
  their [0, 255] range in float32) and 1 for float images."""
  return np.clip(image.astype(np.float32) / scale, 0.0, 1.0)


def eval_images(source: Any, *, image_size: int, count: int, image_key: str = "image") -> np.ndarray:
  """The first `count` records of `source`, short side resized and center-cropped: float32 [N, S, S, 3]."""
  from jaxtok.data import tfds_source  # pylint: disable=g-import-not-at-top
  count = min(int(count), len(source))
  out = []
  for i in range(count):
    record = source[i]
    image = tfds_source.decode_image(record[image_key] if isinstance(record, dict) else record)
    scale = 255.0 if image.dtype == np.uint8 else 1.0
    out.append(_unit(pp.center_crop(pp.resize_short(image, image_size), image_size), scale))
  if not out:
    return np.zeros((0, image_size, image_size, 3), np.float32)
  return np.stack(out)


def _get(cfg: Any, key: str, default: Any) -> Any:
  value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
  return default if value is None else value


def heldout_images(cfg: Any, *, count: int | None = None) -> np.ndarray:
  """The held-out images of `config.data`: float32 [N, S, S, 3] in [0, 1], N = data.heldout.

  The one definition of a run's held-out set: the training loop's evaluations and
  `tools/evaluate.py` on that run's checkpoint both read it from the config stored with the run, so
  they score the same images. `count` overrides data.heldout.
  """
  source = _get(cfg, "source", "photos")
  if source not in SOURCES:
    raise ValueError(f"config.data.source must be one of {SOURCES}, got {source!r}")
  image_size = int(_get(cfg, "image_size", 0))
  n = int(_get(cfg, "heldout", 16) if count is None else count)
  if source == "photos":
    from jaxtok.data import photos  # pylint: disable=g-import-not-at-top
    return photos.load_photos(image_size, n, int(_get(cfg, "max_scale", 4)))[1]
  from jaxtok.data import tfds_source  # pylint: disable=g-import-not-at-top
  name = _get(cfg, "name", "")
  if not name:
    raise ValueError("config.data.source = 'tfds' needs config.data.name (e.g. 'imagenet2012')")
  src = tfds_source.source(name, split=str(_get(cfg, "heldout_split", "validation")),
                           data_dir=_get(cfg, "data_dir", None) or None)
  return eval_images(src, image_size=image_size, count=n)


def from_config(cfg: Any, *, seed: int, process_index: int = 0,
                process_count: int = 1) -> tuple[Any, np.ndarray]:
  """(training iterator of local float32 batches [B / processes, S, S, 3] with get/set_state,
  held-out float32 images [N, S, S, 3]) for `config.data` (see the module docstring)."""
  source = _get(cfg, "source", "photos")
  if source not in SOURCES:
    raise ValueError(f"config.data.source must be one of {SOURCES}, got {source!r}")
  image_size = int(cfg.image_size)
  global_batch = int(cfg.batch_size)
  if global_batch % process_count:
    raise ValueError(f"data.batch_size ({global_batch}) must be divisible by the process count "
                     f"({process_count})")
  if source == "photos":
    from jaxtok.data import photos  # pylint: disable=g-import-not-at-top
    max_scale = int(_get(cfg, "max_scale", 4))
    train, _ = photos.split_photos(photos.bundled_photos())
    data = photos.PhotoCrops(train, image_size=image_size, global_batch=global_batch, seed=seed,
                             max_scale=max_scale, process_index=process_index,
                             process_count=process_count)
    return data, heldout_images(cfg)
  from jaxtok.data import tfds_source  # pylint: disable=g-import-not-at-top
  name = _get(cfg, "name", "")
  if not name:
    raise ValueError("config.data.source = 'tfds' needs config.data.name (e.g. 'imagenet2012')")
  data_dir = _get(cfg, "data_dir", None) or None
  train_src = tfds_source.source(name, split=str(_get(cfg, "split", "train")), data_dir=data_dir)
  pipe = Pipeline(train_src, batch_size=global_batch // process_count, seed=int(seed) % 2**32,
                  preprocess=image_preprocess(image_size, augment=str(_get(cfg, "augment", "random_crop")),
                                              flip=bool(_get(cfg, "flip", True))),
                  shard=(process_index, process_count),
                  num_threads=int(_get(cfg, "num_threads", 2)))
  return ImageBatches(pipe), heldout_images(cfg)

