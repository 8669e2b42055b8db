"""Captions of image folders and tfds datasets, for text-aware tokenizers (TA-TiTok, TexTok) beyond
the bundled photographs (`data.photo_captions`).

Folder: a sidecar file `captions.jsonl` at the top of the folder, one JSON object per line,
    {"file": "<image path relative to the folder, '/'-separated>", "caption": "<text>"}
  e.g. {"file": "cats/0001.png", "caption": "a photo of a cat"}. Every image the tool reads must
  have exactly one line; blank lines are skipped; a missing file, a missing caption, a duplicate or
  a non-string caption is refused naming the file and line.
tfds: `data.caption_key` (tools/pretokenize.py --caption_key) names the record's caption feature;
  "/" walks into nested features (coco_captions: "captions/text"). A str or bytes (UTF-8) feature is
  the caption; a list or array of them (COCO's five per image) gives its FIRST caption, so a record
  always has the same caption (tokens and the captions written beside them agree run to run).

Training on tfds (`training_data`): the grain pipeline of `data.pipeline` with the image
preprocessing of `pipeline.image_preprocess`; each example keeps its caption string, and each batch's
captions become the model's caption inputs on the host (`photo_captions.caption_tables` of the
batch's captions: TexTok's ids, TA-TiTok's CLIP features, one text-tower call per batch), so batches
are
  {"image": float32 [B, S, S, 3], <caption inputs, e.g. "text_ids" int32 [B, L], "text_mask" bool
  [B, L]>}
as the photo batches (which also carry "caption", the photo index, that no step reads); the
pipeline's state is checkpointed and resumes exactly. Held-out images are the first `data.heldout`
records of `data.heldout_split` with their captions. (A folder is no training source in
`data.pipeline`; tools/pretokenize.py reads captioned folders.)

Dimension names: N images, P distinct captions, B batch, S image size, L text length.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

FOLDER_CAPTIONS = "captions.jsonl"


def folder_captions(folder: str, paths: Sequence[str]) -> list[str]:
  """The caption of each image `paths` (relative to `folder`, as `eval.images.list_images` gives
  them) from `<folder>/captions.jsonl` (module docstring). Raises ValueError naming what is wrong."""
  path = os.path.join(folder, FOLDER_CAPTIONS)
  if not os.path.isfile(path):
    raise ValueError(f"captions for the images of {folder!r}: expected {path} with one line "
                     f'{{"file": "<image relative path>", "caption": "<text>"}} per image; not found')
  table: dict[str, str] = {}
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as err:
        raise ValueError(f"{path} line {n}: not JSON ({err.msg})") from None
      if not isinstance(row, dict) or set(row) != {"file", "caption"}:
        raise ValueError(f'{path} line {n}: expected {{"file": ..., "caption": ...}}, got {line.strip()[:80]}')
      name, caption = row["file"], row["caption"]
      if not isinstance(name, str) or not isinstance(caption, str):
        raise ValueError(f"{path} line {n}: file and caption must be strings, got "
                         f"{type(name).__name__} and {type(caption).__name__}")
      name = os.path.normpath(name).replace(os.sep, "/")
      if name in table:
        raise ValueError(f"{path} line {n}: a second caption for {name!r}")
      table[name] = caption
  keys = [os.path.normpath(p).replace(os.sep, "/") for p in paths]
  missing = [k for k in keys if k not in table]
  if missing:
    raise ValueError(f"{path} has no caption for {len(missing)} of the {len(keys)} images, e.g. "
                     f"{missing[:3]}")
  return [table[k] for k in keys]


def record_caption(record: Any, key: str) -> str:
  """The caption of a tfds record at feature path `key` (module docstring: "/" nests, a list gives
  its first caption, bytes are UTF-8). Raises ValueError naming the key and what was found."""
  if not isinstance(key, str) or not key:
    raise ValueError(f"the caption key must be a feature name such as 'caption' or "
                     f"'captions/text', got {key!r}")
  value = record
  for part in key.split("/"):
    if not isinstance(value, dict) or part not in value:
      found = sorted(value) if isinstance(value, dict) else type(value).__name__
      raise ValueError(f"caption key {key!r}: no feature {part!r} in the record (found {found})")
    value = value[part]
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  if isinstance(value, (list, tuple, np.ndarray)):
    if len(value) == 0:
      raise ValueError(f"caption key {key!r}: the record's caption list is empty")
    value = value[0]  # the documented rule: the first of several captions
  if isinstance(value, (bytes, np.bytes_)):
    value = bytes(value).decode("utf-8")
  if not isinstance(value, str):
    raise ValueError(f"caption key {key!r}: expected text (str / bytes, or a list of them), got "
                     f"{type(value).__name__}")
  return value


def tfds_captions(name: str, split: str, data_dir: str | None, count: int, key: str) -> list[str]:
  """The captions of the first `count` records of a tfds split (`record_caption`)."""
  from jaxtok.data import tfds_source  # pylint: disable=g-import-not-at-top
  src = tfds_source.source(name, split=split, data_dir=data_dir)
  return [record_caption(src[i], key) for i in range(min(int(count), len(src)))]


def caption_table(captions: Sequence[str]) -> tuple[list[str], np.ndarray]:
  """(distinct captions [P] in order of first appearance, each image's row int32 [N])."""
  rows: dict[str, int] = {}
  ids = np.asarray([rows.setdefault(c, len(rows)) for c in captions], np.int32)
  return list(rows), ids


class CaptionedBatches:
  """Batches {"image", <caption inputs>} of a Pipeline whose examples are {"image", "caption": str}:
  `to_inputs(captions) -> {name: [B, ...]}` runs once per batch. get_state / set_state are the
  pipeline's."""

  def __init__(self, pipeline: Any, to_inputs: Any):
    self.pipeline, self.to_inputs = pipeline, to_inputs

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = next(self.pipeline)
    out = {"image": np.asarray(batch["image"], np.float32)}
    out.update(self.to_inputs([str(c) for c in batch["caption"]]))
    return out

  def get_state(self) -> dict:
    return self.pipeline.get_state()

  def set_state(self, state: dict) -> None:
    self.pipeline.set_state(state)


def _caption_key(cfg: Any, model: str) -> str:
  key = cfg.get("caption_key") if hasattr(cfg, "get") else None
  if not key:
    raise ValueError(f"{model} trains on captions: with config.data.source = 'tfds', "
                     "config.data.caption_key must name the caption feature (e.g. 'caption', or "
                     "'captions/text' for coco_captions), got none")
  return str(key)


def training_data(config: Any, *, seed: int, process_index: int = 0, process_count: int = 1
                  ) -> tuple[Any, np.ndarray, dict[str, np.ndarray]]:
  """(captioned training batches, held-out images float32 [N, S, S, 3], their caption inputs
  {name: [N, ...]}) for a text-aware tokenizer config with data.source = "tfds" (module docstring;
  data.name, split, heldout_split, heldout, augment, flip, data_dir as `pipeline.from_config`)."""
  from jaxtok.data import photo_captions, pipeline, tfds_source  # pylint: disable=g-import-not-at-top
  cfg = config.data
  key = _caption_key(cfg, config.model.name)
  photo_captions.caption_tables(config, [""])  # refuses a missing / wrong `text` section up front
  name = cfg.get("name") or ""
  if not name:
    raise ValueError("config.data.source = 'tfds' needs config.data.name (e.g. 'coco_captions')")
  global_batch = int(cfg.batch_size)
  if global_batch % process_count:
    raise ValueError(f"data.batch_size ({global_batch}) must be divisible by the process count "
                     f"({process_count})")
  data_dir = cfg.get("data_dir") or None
  image_fn = pipeline.image_preprocess(int(cfg.image_size), augment=str(cfg.get("augment") or
                                                                       "random_crop"),
                                       flip=bool(cfg.get("flip", True)), label_key=None)

  def preprocess(record, rng):
    return {"image": image_fn(record, rng)["image"], "caption": record_caption(record, key)}

  src = tfds_source.source(name, split=str(cfg.get("split") or "train"), data_dir=data_dir)
  pipe = pipeline.Pipeline(src, batch_size=global_batch // process_count, seed=int(seed) % 2**32,
                           preprocess=preprocess, shard=(process_index, process_count),
                           num_threads=int(cfg.get("num_threads") or 2))
  data = CaptionedBatches(pipe, lambda texts: photo_captions.caption_tables(config, texts))
  heldout = pipeline.heldout_images(cfg)
  captions = tfds_captions(name, str(cfg.get("heldout_split") or "validation"), data_dir,
                           len(heldout), key)
  return data, heldout, photo_captions.caption_tables(config, captions)
