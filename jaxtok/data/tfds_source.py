"""Named tensorflow-datasets datasets (imagenet2012, cifar10, ...) as random-access sources.

`source(name, split=...)` is `tfds.data_source(name, split=...)`: it reads a prepared dataset
(ArrayRecord files under `data_dir`, default `~/tensorflow_datasets`, made once with
`tfds build NAME --file_format=array_record`) with random access and decodes each record's features
with numpy, without importing TensorFlow. Feed it to `jaxtok.data.pipeline.Pipeline`.

`decode_image` turns a record's image feature into an [H, W, 3] array: already-decoded arrays pass
through (grey expanded to RGB, alpha dropped), encoded PNG/JPEG bytes (a source opened with skipped
image decoding) are decoded with Pillow. `decode_record` gives {"image", "label"}.
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np

from jaxtok.data import preprocess as pp


def source(name: str, *, split: str = "train", data_dir: str | None = None, **kwargs: Any) -> Any:
  """`tfds.data_source(name, split=split, data_dir=data_dir)`: random access, no TensorFlow.

  Raises:
    ValueError: for an empty name or split (the tfds error for a dataset that was not prepared
      names the directory it looked in).
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"name must be a tfds dataset name such as 'cifar10', got {name!r}")
  if not isinstance(split, str) or not split:
    raise ValueError(f"split must be a tfds split such as 'train', got {split!r}")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.data_source(name, split=split, data_dir=data_dir, **kwargs)


def decode_image(image: Any) -> np.ndarray:
  """An image feature (array, or encoded PNG/JPEG bytes) -> [H, W, 3] array (uint8 stays uint8)."""
  if isinstance(image, (bytes, bytearray, np.bytes_)):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    with Image.open(io.BytesIO(bytes(image))) as im:
      image = np.asarray(im.convert("RGB"))
  arr = np.asarray(image)
  if arr.dtype == object:
    raise TypeError(f"image must be an array or encoded bytes, got an object array {arr.shape}")
  return pp.to_rgb(arr)


def decode_record(record: dict, *, image_key: str = "image", label_key: str | None = "label") -> dict:
  """{"image": [H, W, 3] array, "label": int32 (when the record has one)} of a tfds record."""
  if not isinstance(record, dict) or image_key not in record:
    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise ValueError(f"record must be a dict with an {image_key!r} feature, got {keys}")
  out = {"image": decode_image(record[image_key])}
  if label_key is not None and label_key in record:
    out["label"] = np.int32(record[label_key])
  return out
