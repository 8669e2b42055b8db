"""Instella-T2I's two generators in the tools: training on captioned bit datasets, sampling from
prompts.

`generators.instella_diff` (binary diffusion DiT) and `generators.instella_ar` (binary AR) take the
AMD-OLMo-1B condition as arrays (features [L, B, T, Dt] = HF `hidden_states[1:]`, mask [B, T]).
This module is the generator contract of `jaxtok.train.generator` for both names ("instella_diff",
"instella_ar"): the network is picked by `config.model.name`, and the text tower by
`config.model.text` (`text.olmo_encoder.from_config`: the user's converted OLMo checkpoint and its
tokenizer.json, or a random tiny tower for smoke tests).

Conditioning as the release computes it (`scripts/train_*.py`, `test_*.py`): a batch's prompts and
the empty prompt '' are tokenized together, padded on the left to the batch's longest row, and every
layer's hidden state is read. The empty prompt's row is the unconditional condition (text dropout in
training, classifier-free guidance in sampling). The batch is padded further on the left to a
multiple of `PAD_TO` tokens (`OlmoTextEncoder(..., pad_to=)`): the networks never attend to masked
text keys and OLMo's RoPE makes the real tokens' features independent of the left padding, so the
result is the release's while the jitted tower and step see few distinct shapes.

Training (`batch_labels`, the `side_labels` hook of `train.generator`): the token dataset must hold
captions (tools/pretokenize.py with captions); each batch's captions go through the tower on the
host and reach the step as labels {"features" [B, L, T, Dt], "mask" [B, T], "null_features"
[B, L, T, Dt], "null_mask" [B, T]} (batch axis first, so the trainer shards them like tokens).
Known cost: the features travel through the host (the release runs the frozen LM inside its step);
at the released sizes that is B x 16 x T x 2048 floats per batch.

Sampling (`sample_prompts`, used by tools/sample.py --prompt): opts.cfg_scale s in the library's
u + s (c - u) convention, i.e. the release's (1 + w) c - w u with w = s - 1 (the release's scripts
use w = 7.5: s = 8.5); opts.steps, temperature, protocol (diffusion) and bit_delta (AR).
Dimension names: B batch, L OLMo layers (= network depth), T text tokens, Dt OLMo width.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.generators import instella_ar, instella_diff

NETWORKS = {"instella_diff": instella_diff, "instella_ar": instella_ar}
PAD_TO = 16  # text lengths are rounded up to a multiple of this (few compiled shapes)


def _network(name: str):
  if name not in NETWORKS:
    raise ValueError(f"model name must be one of {sorted(NETWORKS)}, got {name!r}")
  return NETWORKS[name]


def _plain(cfg: Mapping[str, Any]) -> dict:
  return dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)


def make_model(cfg: Mapping[str, Any], *, rngs):
  """The network `cfg["name"]` names (its make_model skips the `text` section, the tower's)."""
  return _network(_plain(cfg).get("name")).make_model(cfg, rngs=rngs)


def loss(model, tokens: jax.Array, labels: Mapping[str, jax.Array], *, rng: jax.Array,
         train: bool = True, step=None):
  """The network's loss (`instella_diff.loss` / `instella_ar.loss`) on bits tokens [B, N, n] with
  `batch_labels`' condition dict; text dropout to the empty prompt's row when train."""
  del step
  for key in ("features", "mask", "null_features", "null_mask"):
    if key not in labels:
      raise ValueError(f"Instella-T2I labels must hold features, mask, null_features and "
                       f"null_mask (text.olmo_encoder features of the captions), got "
                       f"{sorted(labels) if isinstance(labels, Mapping) else type(labels).__name__}")
  net = instella_diff if isinstance(model, instella_diff.InstellaDiff) else instella_ar
  feats = jnp.moveaxis(labels["features"], 1, 0)
  null = (jnp.moveaxis(labels["null_features"], 1, 0), labels["null_mask"])
  return net.loss(model, tokens, feats, labels["mask"], rng=rng, null=null, train=train)


_ENCODERS: dict[str, Any] = {}


def text_encoder(gcfg: Mapping[str, Any]):
  """The OLMo text encoder of `gcfg.text` (`text.olmo_encoder.from_config`), kept per process."""
  from jaxtok.text import olmo_encoder  # pylint: disable=g-import-not-at-top
  text = _plain(gcfg).get("text")
  if not text:
    raise ValueError(f"generator {gcfg.get('name')!r} needs config.model.text: the OLMo tower "
                     f"(olmo_checkpoint = a tools/convert.py --model olmo directory or HF folder, "
                     f"tokenizer_json = its tokenizer.json), or random_init_for_smoke_test with olmo")
  text = _plain(text)
  key = json.dumps(text, sort_keys=True, default=str)
  if key not in _ENCODERS:
    _ENCODERS.clear()  # one tower per process: the released one holds 1.2B parameters
    _ENCODERS[key] = olmo_encoder.from_config(text)
  return _ENCODERS[key]


def encode(encoder, texts: Sequence[str], max_length: int = 128):
  """((features float32 [B, L, T, Dt], mask int32 [B, T]), (null features [1, L, T, Dt], null mask
  [1, T])): the texts and '' through the tower in one batch (the release's call), padded on the
  left to T, a multiple of PAD_TO."""
  out = encoder(list(texts) + [""], max_length=max_length, pad_to=PAD_TO)
  feats = np.moveaxis(np.asarray(out["features"], np.float32), 1, 0)
  mask = np.asarray(out["mask"], np.int32)
  return (feats[:-1], mask[:-1]), (feats[-1:], mask[-1:])


def batch_labels(gcfg: Mapping[str, Any], path: str):
  """Host function for `train.generator` (its `side_labels` hook): batch {"tokens", "caption" int32
  [B], ...} -> {"tokens", "label": the condition dict} (module doc). ValueError when the dataset
  at `path` holds no captions."""
  from jaxtok.data import tokens as token_data  # pylint: disable=g-import-not-at-top
  table = token_data.read_captions(path)
  if table is None or not table["captions"]:
    raise ValueError(f"generator {gcfg.get('name')!r} is text-conditioned: --data must hold "
                     f"captions ({token_data.CAPTIONS_FILE}, tools/pretokenize.py with captions), "
                     f"{path!r} has none")
  captions, encoder = table["captions"], text_encoder(gcfg)

  def fn(batch: dict) -> dict:
    rows = np.asarray(batch["caption"])
    (feats, mask), (null_f, null_m) = encode(encoder, [captions[int(r)] for r in rows])
    b = len(rows)
    return {"tokens": batch["tokens"],
            "label": {"features": feats, "mask": mask,
                      "null_features": np.repeat(null_f, b, axis=0),
                      "null_mask": np.repeat(null_m, b, axis=0)}}

  return fn


def sample_prompts(model, gcfg: Mapping[str, Any], rng: jax.Array, prompts: Sequence[str], opts,
                   encoder=None) -> np.ndarray:
  """Bits int32 [len(prompts), N, n] for the prompts (`encoder`: an OlmoTextEncoder, default the
  config's `text_encoder`); opts: `eval.generate.Options` (module doc)."""
  encoder = encoder if encoder is not None else text_encoder(gcfg)
  (feats, mask), null = encode(encoder, prompts)
  feats = jnp.moveaxis(jnp.asarray(feats), 1, 0)
  null = (jnp.moveaxis(jnp.asarray(null[0]), 1, 0), jnp.asarray(null[1]))
  w = float(opts.cfg_scale) - 1.0
  if isinstance(model, instella_diff.InstellaDiff):
    bits = instella_diff.sample(rng, model, feats, jnp.asarray(mask), null=null,
                                steps=opts.steps or 20, temperature=opts.temperature,
                                cfg_scale=w, protocol=opts.protocol)
  else:
    bits = instella_ar.sample(rng, model, feats, jnp.asarray(mask), null=null,
                              temperature=opts.temperature, cfg_scale=w, delta=opts.bit_delta)
  return np.asarray(bits, np.int32)
