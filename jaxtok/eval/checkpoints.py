"""A tokenizer and its weights from disk, for the tools (encode, decode, evaluate, pretokenize, sample).

The weights come from `jaxtok.train.checkpoint.load_params`, the one reader (training workdirs,
checkpoint or step directories, orbax parameter directories, tools/convert.py outputs; see there).
The tokenizer config may come from a config file (`configs/titok.py:tiny`: a training config with
`.model`, or a bare model config with `.name`) or from the config stored beside the weights.
"""
from __future__ import annotations

import json
from typing import Any

import jax

from jaxtok.train import checkpoint as ckpt_lib


def model_config(config: Any) -> dict:
  """The tokenizer's model config of a training config (`config.model`) or of a model config."""
  from jaxtok.tokenizers import api  # pylint: disable=g-import-not-at-top
  cfg = api.as_dict(config)
  if isinstance(cfg.get("model"), dict) or hasattr(cfg.get("model"), "to_dict"):
    return api.as_dict(cfg["model"])
  if "name" in cfg:
    return cfg
  raise ValueError(f"--config must be a training config with a `model` field or a model config with "
                   f"a `name` field, got fields {sorted(cfg)}")


def load_tokenizer(config: Any, path: str, *, use_ema: bool = True, flag: str = "--checkpoint",
                   config_flag: str = "--config") -> tuple[Any, Any, dict]:
  """(Tokenizer, params, info) from a config (or None: the training checkpoint's stored config).

  info also holds "model_config" (the plain-dict model config actually used).
  """
  from jaxtok.tokenizers import api  # pylint: disable=g-import-not-at-top
  if config is None:
    stored = ckpt_lib.read_config(path, flag=flag)
    if stored is None:
      raise ValueError(f"{config_flag} is required for {path!r}: only training checkpoints and "
                       "tools/convert.py outputs carry their config; pass the tokenizer's config file "
                       "(e.g. configs/titok.py:tiny)")
    config = stored
  mcfg = model_config(config)
  tokenizer = api.build(mcfg)
  params, info = ckpt_lib.load_params(path, tokenizer.abstract_params(), use_ema=use_ema, flag=flag,
                                      sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
  info["model_config"] = json.loads(json.dumps(mcfg, default=str))
  return tokenizer, params, info


def codebook_vectors(tokenizer: Any, params: Any) -> jax.Array | None:
  """The code vectors [C, D] float32 that token ids index (None for continuous tokens).

  VQ: the learned codebook (l2-normalised when the model looks codes up normalised); FSQ: the
  implicit grid of all level combinations.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  model = tokenizer.model(params)
  if tokenizer.vocab_size is None:
    return None
  levels = getattr(model, "fsq_levels", None)
  if getattr(model, "quantizer", "fsq" if levels else "vq") == "fsq" and levels:
    from jaxtok.quantizers import fsq  # pylint: disable=g-import-not-at-top
    return jnp.asarray(fsq.implicit_codebook(levels), jnp.float32)
  book = jnp.asarray(model.codebook.get_value(), jnp.float32)
  if getattr(model, "use_l2_norm", False):
    book = book / jnp.maximum(jnp.linalg.norm(book, axis=-1, keepdims=True), 1e-12)
  return book
