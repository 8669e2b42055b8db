"""Pre-tokenized datasets: what tools/pretokenize.py writes and what generator training reads.

A token dataset is a directory holding
  tokens.npy   int32 [N, K] discrete tokens, int32 [N, K, Q] discrete tokens with a trailing axis
               (residual levels, or bits), or float32 [N, K, D] continuous tokens
  codebook.npy optional float32 [Q, C, D]: an RVQ tokenizer's code vectors (ResGen reads them)
  labels.npy   int32 [N] class labels (-1 where unlabelled)
  meta.json    {"num_examples", "token_shape", "token_dtype", "codebook_size", "tokenizer": {...}, ...}
and, for a text-aware tokenizer's run (tools/pretokenize.py on TA-TiTok / TexTok), the captions:
  captions.json  {"captions": [P str], "text": the tokenizer run's `text` config (how to recompute
                 the features, e.g. for new prompts), "features": [names]}
  caption_ids.npy int32 [N]: each example's row in "captions"
  caption_features.npz  {name: float32 [P + 1, ...]}: the text encoder's outputs for each caption
                 (TA-TiTok's CLIP: "tokens", "penultimate", "pooled"), the last row the empty
                 caption's ("", the unconditional branch); absent when the tokenizer's text inputs
                 are no features (TexTok's word ids)
Items then carry "caption" (int32) too, and `read_captions` gives the table back.
A GPSToken run (tools/pretokenize.py) adds layouts.npy, float32 [N, S, 5]: each example's initial
Gaussians (the partition's), which items then carry as "layout" (`generators.gpstoken_gen`).
It is written atomically (into a temporary sibling directory, then renamed), read by memory mapping
(no copy of the whole array per process), and loaded through grain so that iteration is
deterministic, sharded per process, reshuffled every epoch and resumable from `get_state()`.

Dimension names: N examples, K tokens per image, D token dimension (continuous tokens).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Mapping

import grain
import numpy as np


CAPTIONS_FILE, CAPTION_IDS, CAPTION_FEATURES = "captions.json", "caption_ids", "caption_features.npz"


def _check_captions(captions: Mapping[str, Any], n: int) -> tuple[np.ndarray, list[str], dict]:
  """(ids int32 [N], texts, features) of a `captions` argument, or ValueError naming the field."""
  unknown = sorted(set(captions) - {"ids", "texts", "text", "features"})
  if unknown or "ids" not in captions or "texts" not in captions:
    raise ValueError(f"captions must be a dict with ids, texts [, text, features], got keys "
                     f"{sorted(captions)}")
  texts = list(captions["texts"])
  if not texts or not all(isinstance(t, str) for t in texts):
    raise TypeError(f"captions['texts'] must be a non-empty list of str, got {captions['texts']!r}")
  ids = np.asarray(captions["ids"])
  if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"captions['ids'] must be ints of shape ({n},) to match tokens, got "
                     f"{ids.dtype} {ids.shape}")
  if n and (ids.min() < 0 or ids.max() >= len(texts)):
    raise ValueError(f"captions['ids'] must lie in [0, {len(texts)}) (rows of captions['texts']), "
                     f"got [{ids.min()}, {ids.max()}]")
  features = {k: np.asarray(v, np.float32) for k, v in (captions.get("features") or {}).items()}
  bad = {k: v.shape for k, v in features.items() if v.ndim < 2 or v.shape[0] != len(texts) + 1}
  if bad:
    raise ValueError(f"captions['features'] must be [{len(texts) + 1}, ...] (one row per caption, "
                     f"then the empty caption's), got {bad}")
  return ids.astype(np.int32), texts, features


def write_token_dataset(path: str, tokens: np.ndarray, labels: np.ndarray | None = None,
                        meta: Mapping[str, Any] | None = None,
                        arrays: Mapping[str, np.ndarray] | None = None,
                        captions: Mapping[str, Any] | None = None) -> None:
  """Writes a token dataset directory atomically (an existing directory at `path` is replaced).

  Integer tokens (ndim 2 or 3) are stored int32, floating [N, K, D] float32. `arrays`: extra
  <name>.npy files (e.g. {"codebook": [Q, C, D]}). `captions`: {"ids": int [N], "texts": [P str],
  "text": the text config (JSON-able) or None, "features": {name: [P + 1, ...]} or None} (the
  caption files of the module docstring).
  """
  tokens = np.asarray(tokens)
  if tokens.ndim not in (2, 3):
    raise ValueError(f"tokens must be [N, K] (discrete), [N, K, Q] (discrete, a trailing axis) or "
                     f"[N, K, D] (continuous), got shape {tokens.shape}")
  if tokens.ndim == 2 or np.issubdtype(tokens.dtype, np.integer):
    if not np.issubdtype(tokens.dtype, np.integer):
      raise TypeError(f"discrete tokens [N, K] must be integers, got {tokens.dtype}")
    tokens = tokens.astype(np.int32)
  else:
    tokens = tokens.astype(np.float32)
  n = tokens.shape[0]
  labels = np.full((n,), -1, np.int32) if labels is None else np.asarray(labels).astype(np.int32)
  if labels.shape != (n,):
    raise ValueError(f"labels must have shape ({n},) to match tokens, got {labels.shape}")
  if captions is not None:
    caption_ids, texts, features = _check_captions(captions, n)
  info = dict(meta or {})
  info.update(num_examples=n, token_shape=list(tokens.shape[1:]), token_dtype=str(tokens.dtype))
  parent = os.path.dirname(os.path.abspath(path)) or "."
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp-tokens-", dir=parent)
  try:
    np.save(os.path.join(tmp, "tokens.npy"), tokens)
    np.save(os.path.join(tmp, "labels.npy"), labels)
    for name, value in (arrays or {}).items():
      np.save(os.path.join(tmp, f"{name}.npy"), np.asarray(value))
    if captions is not None:
      np.save(os.path.join(tmp, f"{CAPTION_IDS}.npy"), caption_ids)
      with open(os.path.join(tmp, CAPTIONS_FILE), "w") as f:
        json.dump({"captions": texts, "text": captions.get("text"), "features": sorted(features)},
                  f, indent=2, sort_keys=True)
      if features:
        np.savez(os.path.join(tmp, CAPTION_FEATURES), **features)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(info, f, indent=2, sort_keys=True)
    if os.path.exists(path):
      shutil.rmtree(path)
    os.replace(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def read_meta(path: str) -> dict[str, Any]:
  """The meta.json of a token dataset, with a clear error when the directory is not one."""
  meta_path = os.path.join(path, "meta.json")
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"{path!r} is not a token dataset (no meta.json); write one with "
                            "tools/pretokenize.py")
  with open(meta_path) as f:
    return json.load(f)


def read_captions(path: str) -> dict[str, Any] | None:
  """The caption table of a token dataset: {"captions": [P str], "text": config or None, "features":
  {name: float32 [P + 1, ...]} (last row: the empty caption)}, or None when it holds no captions."""
  where = os.path.join(path, CAPTIONS_FILE)
  if not os.path.exists(where):
    return None
  with open(where) as f:
    table = json.load(f)
  features = {}
  if table.get("features"):
    with np.load(os.path.join(path, CAPTION_FEATURES)) as npz:
      features = {k: np.asarray(npz[k]) for k in table["features"]}
  return {"captions": list(table["captions"]), "text": table.get("text"), "features": features}


class TokenSource:
  """grain random-access source over a token dataset: item i is {"tokens": ..., "label": int32}
  (and "caption": int32, the row of its caption, when the dataset holds captions)."""

  def __init__(self, path: str):
    self.meta = read_meta(path)
    self._tokens = np.load(os.path.join(path, "tokens.npy"), mmap_mode="r")
    self._labels = np.load(os.path.join(path, "labels.npy"), mmap_mode="r")
    ids = os.path.join(path, f"{CAPTION_IDS}.npy")
    self._captions = np.load(ids, mmap_mode="r") if os.path.exists(ids) else None
    lay = os.path.join(path, "layouts.npy")  # GPSToken runs: initial layouts [N, S, 5]
    self._layouts = np.load(lay, mmap_mode="r") if os.path.exists(lay) else None
    if self._tokens.shape[0] != self.meta["num_examples"] or self._labels.shape[0] != self._tokens.shape[0]:
      raise ValueError(f"token dataset {path!r} is inconsistent: meta says {self.meta['num_examples']} "
                       f"examples, tokens.npy has {self._tokens.shape[0]}, labels.npy {self._labels.shape[0]}")

  def __len__(self) -> int:
    return self._tokens.shape[0]

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    item = {"tokens": np.array(self._tokens[i]), "label": np.int32(self._labels[i])}
    if self._captions is not None:
      item["caption"] = np.int32(self._captions[i])
    if self._layouts is not None:
      item["layout"] = np.array(self._layouts[i], np.float32)
    return item


def check_data(config, meta: dict, path: str) -> None:
  """Raises ValueError naming the config field when a token dataset does not fit the generator.

  meta: the dataset's meta.json (`read_meta`); path: its directory (labels.npy is
  read memory-mapped). Checked before training so the error names the override to pass.
  """
  g = config.model
  shape = list(meta.get("token_shape", []))
  continuous = str(meta.get("token_dtype", "int32")).startswith("float")
  problems = []
  if shape and g.get("seq_len") is not None and shape[0] != g.seq_len:
    problems.append(f"config.model.seq_len is {g.seq_len}, the data have {shape[0]} tokens per "
                    f"image (--config.model.seq_len={shape[0]})")
  if g.name in ("mar", "ecar", "tokenbridge", "cubid", "xar", "himar", "maskgen_kl", "gpstoken_gen"):  # continuous
    if not continuous:
      problems.append(f"generator {g.name!r} needs continuous tokens [N, K, D]; {path!r} holds discrete "
                      f"{meta.get('token_dtype')} tokens")
    elif len(shape) == 2 and shape[1] != g.token_dim:
      problems.append(f"config.model.token_dim is {g.token_dim}, the data's tokens have {shape[1]} "
                      f"dimensions (--config.model.token_dim={shape[1]})")
  else:
    if continuous:
      problems.append(f"generator {g.name!r} needs discrete tokens; {path!r} holds continuous tokens "
                      f"{shape} (use configs/mar_vae.py)")
    trailing = next((f for f in ("num_levels", "num_bits") if g.get(f) is not None), None)
    if trailing and len(shape) != 2:
      problems.append(f"generator {g.name!r} needs tokens [N, K, {trailing}]; {path!r} holds tokens "
                      f"of shape [N] + {shape}")
    elif trailing and shape[1] != g[trailing]:
      problems.append(f"config.model.{trailing} is {g[trailing]}, the data's tokens have {shape[1]} "
                      f"entries each (--config.model.{trailing}={shape[1]})")
    book = meta.get("codebook_size")
    if g.get("num_bits") is not None:
      if book is not None and book != 2:
        problems.append(f"generator {g.name!r} needs bit tokens (codebook_size 2: a binary tokenizer "
                        f"with more than 31 bits per token), the tokenizer has {book} codes")
    elif book is not None and g.get("codebook_size") != book:
      problems.append(f"config.model.codebook_size is {g.get('codebook_size')}, the tokenizer has "
                      f"{book} codes (--config.model.codebook_size={book})")
  classes = int(g.get("num_classes", 0))
  labels = np.load(os.path.join(path, "labels.npy"), mmap_mode="r")
  top = int(labels.max(initial=-1))
  if classes > 0 and top >= classes:
    problems.append(f"config.model.num_classes is {classes}, the data's labels reach {top} "
                    f"(--config.model.num_classes={top + 1})")
  if problems:
    raise ValueError(f"--data {path!r} does not fit the generator config:\n  " + "\n  ".join(problems))


def token_dataset(path: str, *, batch_size: int, seed: int, shard_index: int = 0, shard_count: int = 1,
                  num_epochs: int | None = None) -> grain.MapDataset:
  """Batches of a token dataset for one process: its shard, shuffled anew every epoch, repeated.

  Args:
    path: the dataset directory.
    batch_size: per-process batch size (the last partial batch of a finite run is dropped).
    seed: shuffle seed (the same on every process; shards are disjoint slices of the examples).
    shard_index, shard_count: this process's slice, usually jax.process_index()/process_count().
    num_epochs: None repeats forever.
  """
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  ds = grain.MapDataset.source(TokenSource(path))[shard_index::shard_count]
  if len(ds) < batch_size:
    raise ValueError(f"shard {shard_index} of {path!r} holds {len(ds)} examples, fewer than one batch "
                     f"of {batch_size}")
  return ds.shuffle(seed=seed).repeat(num_epochs).batch(batch_size, drop_remainder=True)


def token_iterator(path: str, **kwargs) -> grain.DatasetIterator:
  """A resumable iterator over `token_dataset(path, **kwargs)` (get_state / set_state)."""
  ds = token_dataset(path, **kwargs)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))
