"""The bundled photographs with one caption each, for text-conditioned training (TA-TiTok, MaskGen).

`CAPTIONS` names what each bundled photograph shows ("a photo of an astronaut", ...).
`CaptionedCrops` is `photos.PhotoCrops` (same crops, same resumable state) whose batches are dicts
  {"image": float32 [B, S, S, 3] in [0, 1], "text_features": float32 [B, T, C], "caption": int32 [B]}
where text_features are a per-photo table (the CLIP features of each caption, computed once by the
caller, e.g. `text.encoder.TextEncoder`'s "tokens") indexed by the photo each crop was cut from, and
caption is that photo's index.
"""
from __future__ import annotations

import numpy as np

from jaxtok.data import photos as photos_lib

CAPTIONS = {
    "astronaut": "a photo of an astronaut",
    "coffee": "a photo of a cup of coffee",
    "chelsea": "a photo of a cat",
    "rocket": "a photo of a rocket on a launch pad",
    "immunohistochemistry": "a microscope image of stained tissue",
    "motorcycle_left": "a photo of a motorcycle",
    "retina": "a photo of a retina",
    "hubble_deep_field": "a telescope image of galaxies",
    "china": "a photo of a temple",
    "flower": "a photo of a flower",
}


def captioned_photos() -> tuple[list[np.ndarray], list[str]]:
  """(training photographs (left three quarters, `photos.split_photos`), their captions)."""
  named = photos_lib.named_photos()
  train, _ = photos_lib.split_photos([p for _, p in named])
  return train, [CAPTIONS[n] for n, _ in named]


class CaptionedCrops:
  """Batches {"image", "text_features", "caption"} (module docstring) over `photos`.

  Args:
    photos: uint8 [h, w, 3] photographs; text_features: float [len(photos), T, C], row j the
      features of photo j's caption. The other arguments are `photos.PhotoCrops`'.
  """

  def __init__(self, photos: list[np.ndarray], text_features: np.ndarray, *, image_size: int,
               global_batch: int, seed: int, max_scale: int = 4):
    text_features = np.asarray(text_features, np.float32)
    if text_features.ndim != 3 or text_features.shape[0] != len(photos):
      raise ValueError(f"text_features must be [{len(photos)}, T, C] (one row per photo), got "
                       f"{text_features.shape}")
    self.text_features = text_features
    self.crops = photos_lib.PhotoCrops(photos, image_size=image_size, global_batch=global_batch,
                                       seed=seed, max_scale=max_scale)

  def get_state(self) -> dict:
    return self.crops.get_state()

  def set_state(self, state: dict) -> None:
    self.crops.set_state(state)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    images = next(self.crops)
    rows = self.crops.last_photos
    return {"image": images, "text_features": self.text_features[rows], "caption": rows.copy()}


def training_data(config, *, seed: int = 0) -> CaptionedCrops:
  """`CaptionedCrops` over the bundled photographs for a text-aware tokenizer config (`configs/
  tatitok.py`): config.data (image_size, batch_size, max_scale) and config.text (the CLIP text
  encoder, `text.encoder.from_config`), whose "tokens" features of each caption fill the table."""
  from jaxtok.text import encoder as encoder_lib  # pylint: disable=g-import-not-at-top
  photos, captions = captioned_photos()
  features = encoder_lib.from_config(config.text)(captions)["tokens"]
  return CaptionedCrops(photos, features, image_size=int(config.data.image_size),
                        global_batch=int(config.data.batch_size), seed=seed,
                        max_scale=int(config.data.get("max_scale", 4)))
