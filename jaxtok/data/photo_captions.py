"""The bundled photographs with one caption each, for text-aware training (TA-TiTok, TexTok, MaskGen).

The captions are `data.captions.CAPTIONS` (one table for every text-aware model). A text-aware
tokenizer module (one whose module defines `caption_inputs(text_cfg, captions)`, e.g.
`tokenizers.tatitok`, `tokenizers.textok`) turns the list of captions into per-caption tables, dicts
of arrays with one row per caption:
  TA-TiTok  {"text_features": float32 [P, T, C]}   (the frozen CLIP tower's "tokens" features)
  TexTok    {"text_ids": int32 [P, L], "text_mask": bool [P, L]}   (`captions.WordVocab` ids)
`CaptionedCrops` is `photos.PhotoCrops` (same crops, same resumable state) whose batches are dicts
  {"image": float32 [B, S, S, 3] in [0, 1], <each table's rows for the batch>, "caption": int32 [B]}
indexed by the photo each crop was cut from; "caption" is that photo's index (= its caption row).
The held-out crops (`photos.heldout_crops`) are cut from the held-out strips in turn, so held-out
crop i shows photo i mod P and carries that caption (`heldout_captions`).

Dimension names: P photographs (= captions), B batch, T / L text length, C text feature width.
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping

import numpy as np

from jaxtok.data import photos as photos_lib
from jaxtok.data.captions import CAPTIONS  # noqa: F401  (the one caption table, re-exported)


def captioned_photos() -> tuple[list[np.ndarray], list[str]]:
  """(training photographs (left three quarters, `photos.split_photos`), their captions)."""
  named = photos_lib.named_photos()
  train, _ = photos_lib.split_photos([p for _, p in named])
  return train, [CAPTIONS[n] for n, _ in named]


def heldout_captions(count: int, num_photos: int) -> np.ndarray:
  """int32 [count]: the caption row (photo index) of each held-out crop (`photos.heldout_crops`
  cuts crop i from strip i mod num_photos)."""
  return (np.arange(int(count)) % int(num_photos)).astype(np.int32)


def _tables(tables: Any, rows: int) -> dict[str, np.ndarray]:
  if not isinstance(tables, Mapping):  # a bare array is TA-TiTok's text-features table
    tables = {"text_features": np.asarray(tables, np.float32)}
  out = {}
  for name, table in tables.items():
    table = np.asarray(table)
    if table.ndim < 2 or table.shape[0] != rows:
      raise ValueError(f"caption table {name!r} must be [{rows}, ...] (one row per photo), got "
                       f"{table.shape}")
    out[name] = table
  if not out or "image" in out or "caption" in out:
    raise ValueError(f"caption tables must be a non-empty dict of arrays not named 'image' or "
                     f"'caption', got {sorted(out)}")
  return out


class CaptionedCrops:
  """Batches {"image", <tables' rows>, "caption"} (module docstring) over `photos`.

  Args:
    photos: uint8 [h, w, 3] photographs.
    tables: {name: array [len(photos), ...]}, row j for photo j's caption; a bare float array
      [len(photos), T, C] is taken as {"text_features": ...}.
    The other arguments are `photos.PhotoCrops`'.
  """

  def __init__(self, photos: list[np.ndarray], tables: Any, *, image_size: int,
               global_batch: int, seed: int, max_scale: int = 4, process_index: int = 0,
               process_count: int = 1):
    self.tables = _tables(tables, len(photos))
    self.crops = photos_lib.PhotoCrops(photos, image_size=image_size, global_batch=global_batch,
                                       seed=seed, max_scale=max_scale, process_index=process_index,
                                       process_count=process_count)

  @property
  def text_features(self) -> np.ndarray | None:
    return self.tables.get("text_features")

  def get_state(self) -> dict:
    return self.crops.get_state()

  def set_state(self, state: dict) -> None:
    self.crops.set_state(state)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    images = next(self.crops)
    rows = self.crops.last_photos
    out = {"image": images}
    out.update({name: table[rows] for name, table in self.tables.items()})
    out["caption"] = rows.copy()
    return out


def text_module(model_name: str | None):
  """The tokenizer module of `model_name` when it reads captions (defines `caption_inputs`), else
  None."""
  from jaxtok.tokenizers import api  # pylint: disable=g-import-not-at-top
  if model_name not in api.MODULES:
    return None
  module = importlib.import_module(f"jaxtok.tokenizers.{api.MODULES[model_name]}")
  return module if hasattr(module, "caption_inputs") else None


def caption_tables(config: Any, captions: list[str]) -> dict[str, np.ndarray]:
  """The model's per-caption tables ({name: [len(captions), ...]}) for a text-aware tokenizer
  config, from its `config.text` section (`caption_inputs` of the model's module)."""
  name = config.model.get("name")
  module = text_module(name)
  if module is None:
    raise ValueError(f"config.model.name {name!r} does not read captions (no caption_inputs in its "
                     "module); captioned data are for TA-TiTok and TexTok")
  text_cfg = config.get("text")
  if text_cfg is None:
    raise ValueError(f"{name} trains on captions: config.text must say how captions become its text "
                     f"inputs (see configs/{name}.py), got none")
  return {k: np.asarray(v) for k, v in module.caption_inputs(text_cfg, list(captions)).items()}


def training_data(config: Any, *, seed: int = 0, process_index: int = 0,
                  process_count: int = 1) -> CaptionedCrops:
  """`CaptionedCrops` over the bundled photographs for a text-aware tokenizer config:
  config.data (image_size, batch_size, max_scale) and config.text (`caption_tables`)."""
  photos, captions = captioned_photos()
  return CaptionedCrops(photos, caption_tables(config, captions),
                        image_size=int(config.data.image_size),
                        global_batch=int(config.data.batch_size), seed=seed,
                        max_scale=int(config.data.get("max_scale", 4)),
                        process_index=process_index, process_count=process_count)


def from_config(config: Any, *, seed: int, process_index: int = 0, process_count: int = 1
                ) -> tuple[CaptionedCrops, np.ndarray, dict[str, np.ndarray]]:
  """What the training loop reads for a text-aware tokenizer: (training batches, held-out images
  float32 [N, S, S, 3] (`pipeline.heldout_images`), their caption inputs {name: [N, ...]}); with
  data.source = "tfds", `caption_sources.training_data` (captions from data.caption_key)."""
  from jaxtok.data import pipeline  # pylint: disable=g-import-not-at-top
  source = config.data.get("source") or "photos"
  if source == "tfds":  # captions from a record feature (data.caption_key)
    from jaxtok.data import caption_sources  # pylint: disable=g-import-not-at-top
    return caption_sources.training_data(config, seed=seed, process_index=process_index,
                                         process_count=process_count)
  if source != "photos":
    raise ValueError(f"captioned training reads the bundled photographs or a tfds dataset with "
                     f"data.caption_key: config.data.source must be 'photos' or 'tfds' for "
                     f"{config.model.name}, got {source!r}")
  data = training_data(config, seed=seed, process_index=process_index, process_count=process_count)
  heldout = pipeline.heldout_images(config.data)
  rows = heldout_captions(len(heldout), len(next(iter(data.tables.values()))))
  return data, heldout, {k: v[rows] for k, v in data.tables.items()}


def refuse_captionless(model_config: Mapping[str, Any], tool: str) -> None:
  """Raises ValueError when a tool whose images carry no captions (`tool`) is given a text-aware
  tokenizer (its decoder, and TexTok's encoder, read each image's caption)."""
  name = model_config.get("name")
  if text_module(name) is not None:
    raise ValueError(f"{tool} cannot run the text-aware tokenizer {name!r}: it reads each image's "
                     f"caption, and {tool}'s images carry none. Its training run scores the "
                     "captioned held-out crops (<workdir>/final_metrics.json); tools/pretokenize.py "
                     "tokenizes captioned images (--source photos, folder with captions.jsonl, "
                     "tfds with --caption_key)")
