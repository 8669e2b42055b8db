"""Fits the codec's token priors for a trained tokenizer run, and loads them back.

`train(checkpoint, out)` draws fresh crops from the run's own training distribution (its stored
`config.data`, another seed), tokenizes them, and writes into `out`:

  prior.json       what was fitted (tokenizer checkpoint, K, vocabulary, example count, GPT config)
  unigram.npz      global token frequencies (`priors.Unigram`)
  unigram_pos.npz  one frequency table per position
  vocab.npz        the compact vocabulary id map (`jaxtok.codec.vocab`)
  tokens/          the training tokens in compact ids (a `jaxtok.data.tokens` dataset)
  gpt/             the causal prior's run (`jaxtok.configs.codec_prior`, trained by
                   `jaxtok.train.generator.train`; resumes like any run)

The tokenizer's run directory is only read. `load(out, kind, tokenizer)` rebuilds a prior by name.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from jaxtok.codec import priors, vocab
from jaxtok.eval.images import to_uint8

KINDS = ("uniform", "unigram", "unigram_pos", "causal")


def run_data_config(checkpoint: str) -> dict:
  """The `data` block of the tokenizer run's stored training config."""
  from jaxtok.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  stored = ckpt_lib.read_config(checkpoint)
  if not stored or "data" not in stored:
    raise ValueError(f"--checkpoint {checkpoint!r} carries no training config with a data block: "
                     "the priors are fitted on the run's own training distribution")
  return stored["data"]


def training_images(data_cfg: dict, *, count: int, seed: int) -> np.ndarray:
  """`count` fresh training crops uint8 [count, S, S, 3] from the run's data distribution."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from jaxtok.data import pipeline  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict(dict(data_cfg, heldout=0))
  it, _ = pipeline.from_config(cfg, seed=seed)
  batches = []
  while sum(len(b) for b in batches) < count:
    batches.append(np.asarray(next(it)))
  return to_uint8(np.concatenate(batches)[:count])


def heldout_images(data_cfg: dict, count: int | None = None, *, image_size: int | None = None,
                   max_scale: int | None = None) -> np.ndarray:
  """The run's held-out crops (the images its evaluations score), uint8 [N, S, S, 3]; image_size /
  max_scale draw larger crops (whole tiles for the codec) from the same held-out photos instead."""
  from jaxtok.data import pipeline  # pylint: disable=g-import-not-at-top
  cfg = dict(data_cfg)
  cfg.update({k: v for k, v in (("image_size", image_size), ("max_scale", max_scale)) if v})
  return to_uint8(pipeline.heldout_images(cfg, count=count))


def tokenize(tokenizer: Any, params: Any, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
  """uint8 [N, S, S, 3] -> all K tokens int32 [N, K] (`image_codec.tokenize` in batches)."""
  from jaxtok.codec import image_codec  # pylint: disable=g-import-not-at-top
  model = image_codec.Model(tokenizer, params, None)
  return np.concatenate([image_codec.tokenize(model, images[i:i + batch_size])
                         for i in range(0, len(images), batch_size)])


def gpt_config(meta: dict) -> Any:
  from jaxtok.configs import codec_prior  # pylint: disable=g-import-not-at-top
  c = codec_prior.get_config(meta["config_arg"])
  if meta.get("steps"):
    c.total_steps = int(meta["steps"])
    c.ckpt_every = int(meta["steps"])
  return c


def train(checkpoint: str, out: str, *, num_examples: int = 20000, steps: int | None = None,
          config_arg: str = "", seed: int = 1, progress: bool = True) -> dict:
  """Fits every prior of `KINDS` for the tokenizer at `checkpoint` into `out` (see the module doc)."""
  from jaxtok.data import tokens as token_data  # pylint: disable=g-import-not-at-top
  from jaxtok.eval import checkpoints  # pylint: disable=g-import-not-at-top
  from jaxtok.train import generator  # pylint: disable=g-import-not-at-top
  if not isinstance(num_examples, int) or num_examples < 1:
    raise ValueError(f"num_examples must be an int >= 1, got {num_examples!r}")
  tokenizer, params, info = checkpoints.load_tokenizer(None, checkpoint)
  if tokenizer.vocab_size is None:
    raise ValueError("the codec needs a discrete tokenizer (token ids), got continuous tokens")
  tokens = tokenize(tokenizer, params, training_images(run_data_config(checkpoint),
                                                       count=num_examples, seed=seed))
  id_map = vocab.compact(tokens, tokenizer.vocab_size)
  k = tokens.shape[1]
  arg = ",".join(a for a in (f"vocab={vocab.size(id_map)},tokens={k}", config_arg) if a)
  meta = {"checkpoint": os.path.abspath(checkpoint), "weights": info.get("weights"),
          "step": info.get("step"), "vocab_size": int(tokenizer.vocab_size), "tokens": int(k),
          "compact_vocab": vocab.size(id_map), "num_examples": num_examples, "seed": seed,
          "config_arg": arg, "steps": steps}
  os.makedirs(out, exist_ok=True)
  path = os.path.join(out, "prior.json")
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old != meta:
      diff = sorted(key for key in set(old) | set(meta) if old.get(key) != meta.get(key))
      raise ValueError(f"{out!r} holds priors fitted differently (fields {diff}); use a new --out")
  priors.Unigram.fit(tokens, tokenizer.vocab_size).save(os.path.join(out, "unigram.npz"))
  priors.Unigram.fit(tokens, tokenizer.vocab_size, per_position=True).save(
      os.path.join(out, "unigram_pos.npz"))
  np.savez(os.path.join(out, "vocab.npz"), id_map=id_map)
  data_dir = os.path.join(out, "tokens")
  if not os.path.exists(os.path.join(data_dir, "meta.json")):
    token_data.write_token_dataset(data_dir, id_map[tokens], None,
                                   {"source": "codec prior", "codebook_size": vocab.size(id_map),
                                    "num_classes": 0})
  with open(path, "w") as f:
    json.dump(meta, f, indent=1)
  config = gpt_config(meta)
  config.data.path = data_dir
  metrics = generator.train(config, os.path.join(out, "gpt"), progress=progress)
  return {"meta": meta, "gpt": metrics}


def load(out: str, kind: str, tokenizer: Any) -> Any:
  """The prior `kind` (one of KINDS) fitted in `out` for `tokenizer` ("uniform" needs no `out`)."""
  if kind not in KINDS:
    raise ValueError(f"prior kind must be one of {KINDS}, got {kind!r}")
  if kind == "uniform":
    return priors.Uniform(tokenizer.vocab_size)
  path = os.path.join(out or "", "prior.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"--prior: expected a folder made by tools/train_prior.py (with "
                            f"prior.json), got {out!r}")
  with open(path) as f:
    meta = json.load(f)
  if meta["vocab_size"] != tokenizer.vocab_size:
    raise ValueError(f"the priors in {out!r} model a {meta['vocab_size']}-code tokenizer, this one "
                     f"has {tokenizer.vocab_size} codes")
  if kind in ("unigram", "unigram_pos"):
    return priors.Unigram.load(os.path.join(out, f"{kind}.npz"))
  from jaxtok.train import generator  # pylint: disable=g-import-not-at-top
  config = gpt_config(meta)
  config.data.path = os.path.join(out, "tokens")
  graphdef, params = generator.load_params(config, os.path.join(out, "gpt"), use_ema=False)
  with np.load(os.path.join(out, "vocab.npz")) as f:
    id_map = f["id_map"]
  return priors.Causal(graphdef, params, seq_len=meta["tokens"], vocab_size=meta["vocab_size"],
                       id_map=id_map)


def load_model(checkpoint: str, prior_dir: str | None, kind: str) -> Any:
  """`image_codec.Model` of the tokenizer at `checkpoint` (its stored config) and a fitted prior."""
  from jaxtok.codec import image_codec  # pylint: disable=g-import-not-at-top
  from jaxtok.eval import checkpoints  # pylint: disable=g-import-not-at-top
  tokenizer, params, _ = checkpoints.load_tokenizer(None, checkpoint)
  if tokenizer.vocab_size is None or tokenizer.max_tokens is None:
    raise ValueError("the codec needs a discrete tokenizer with ordered tokens (One-D-Piece, FlexTok, "
                     "TiTok): this checkpoint's tokens are continuous")
  return image_codec.Model(tokenizer, params, load(prior_dir, kind, tokenizer))
