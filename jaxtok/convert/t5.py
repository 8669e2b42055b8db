"""Hugging Face T5 encoders -> `nn.t5.T5Encoder` parameters.

Key map (transformers `T5EncoderModel`, or the encoder half of `T5ForConditionalGeneration`: its
`decoder.*` and `lm_head.*` tensors are ignored; `encoder.embed_tokens.weight`, a tied copy of
`shared.weight`, too):

  shared.weight [V, W]                                     -> embed [V, W]
  encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight [buckets, H] -> relative_bias
  encoder.block.i.layer.0.SelfAttention.{q,k,v}.weight     -> blocks.blocks.i.attn.qkv [W, 3, H, E]
      [H*E, W] each (torch Linear, no bias)
  encoder.block.i.layer.0.SelfAttention.o.weight [W, H*E]  -> blocks.blocks.i.attn.out [H, E, W]
  encoder.block.i.layer.0.layer_norm.weight                -> blocks.blocks.i.norm1.scale
  encoder.block.i.layer.1.layer_norm.weight                -> blocks.blocks.i.norm2.scale
  encoder.block.i.layer.1.DenseReluDense.wi_0 / wi_1 / wo  -> mlp.gate / mlp.up / mlp.down (.T)
      (T5 v1.0 files, a ReLU `wi`, are refused: only v1.1 / Flan-T5 is supported)
  encoder.final_layer_norm.weight                          -> norm.scale

Heads are not visible in the shapes of every tensor, but relative_attention_bias [buckets, H] shows
them, so a whole file needs no config.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np

from jaxtok.convert import common
from jaxtok.convert.siglip import fuse_qkv

_LAYER = re.compile(r"encoder\.block\.(\d+)\.layer\.([01])\.(.+)$")
_BIAS = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
_IGNORED = ("decoder.", "lm_head.", "encoder.embed_tokens.")
WEIGHTS_HELP = ("a Hugging Face T5 checkpoint (model.safetensors or pytorch_model.bin of e.g. "
                "google/flan-t5-base or google-t5/t5-base); jaxtok never downloads it")


def encoder_tensors(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The tensors of `flat` that the encoder uses (decoder, LM head and the tied embedding copy out)."""
  return {k: v for k, v in flat.items() if not k.startswith(_IGNORED)}


def infer_config(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """A jaxtok T5 config read off the tensor shapes."""
  try:
    vocab, width = (int(n) for n in flat["shared.weight"].shape)
    buckets, heads = (int(n) for n in flat[_BIAS].shape)
    inner = int(flat["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0])
  except KeyError as e:
    raise ValueError(f"not a T5 state dict (no tensor {e}); keys start with "
                     f"{sorted({k.split('.')[0] for k in flat})[:10]}") from None
  if "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" not in flat:
    raise ValueError("a T5 v1.0 checkpoint (ReLU DenseReluDense.wi) is not supported; use a v1.1 / "
                     "Flan-T5 encoder (gated-gelu wi_0 / wi_1)")
  wi = flat["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"]
  depth = len({int(m.group(1)) for k in flat for m in [_LAYER.match(k)] if m})
  return dict(vocab_size=vocab, width=width, depth=depth, num_heads=heads, head_dim=inner // heads,
              mlp_hidden=int(wi.shape[0]), mlp="geglu", num_buckets=buckets)


def convert(flat: Mapping[str, np.ndarray], num_heads: int) -> dict[str, np.ndarray]:
  """HF names and layouts -> jaxtok names (module docstring); unknown keys pass through so that
  `fill_state` reports them."""
  out: dict[str, np.ndarray] = {}
  qkv: dict[str, dict[str, np.ndarray]] = {}
  mlp = {"wi_0": "gate", "wi_1": "up", "wo": "down"}
  for key, value in encoder_tensors(flat).items():
    v = np.asarray(value, np.float32)
    m = _LAYER.match(key)
    if key == "shared.weight":
      out["embed"] = v
    elif key == _BIAS:
      out["relative_bias"] = v
    elif key == "encoder.final_layer_norm.weight":
      out["norm.scale"] = v
    elif m is None:
      out[key] = v
    else:
      dst, sub, name = f"blocks.blocks.{m.group(1)}.", m.group(2), m.group(3)
      if name == "layer_norm.weight":
        out[dst + ("norm1" if sub == "0" else "norm2") + ".scale"] = v
      elif sub == "0" and name in ("SelfAttention.q.weight", "SelfAttention.k.weight",
                                   "SelfAttention.v.weight"):
        qkv.setdefault(dst + "attn", {})[name.split(".")[1]] = v
      elif sub == "0" and name == "SelfAttention.o.weight":
        out[dst + "attn.out"] = v.T.reshape(num_heads, -1, v.shape[0])
      elif sub == "1" and name.startswith("DenseReluDense.") and name.split(".")[1] in mlp:
        out[dst + f"mlp.{mlp[name.split('.')[1]]}.kernel"] = v.T
      else:
        out[key] = v
  for dst, parts in qkv.items():
    if sorted(parts) != ["k", "q", "v"]:
      out.update({f"{dst}.{n}": a for n, a in parts.items()})
      continue
    out[dst + ".qkv"] = fuse_qkv([parts[c] for c in "qkv"], num_heads)
  return out


def load(path: str | os.PathLike, config: Mapping[str, Any] | None = None):
  """(jaxtok T5 config, nnx.State of `nn.t5.T5Encoder`) from a HF T5 weights file.

  config: None (read off the shapes) or a mapping of `nn.t5` fields overriding them. Raises
  ValueError for a file that does not exist (naming what to get) and naming every missing,
  unexpected or mis-shaped tensor.
  """
  from jaxtok.nn import t5
  overrides = common.tower_overrides(config, "T5")
  if not os.path.exists(os.fspath(path)):
    raise ValueError(f"T5 weights {os.fspath(path)!r} do not exist; expected {WEIGHTS_HELP}")
  # T5 heads are read off the relative-position bias table, so infer_config needs no override.
  return common.fill_tower(common.read_checkpoint(path)[0], overrides,
                           infer_config=lambda flat, _heads: infer_config(flat), convert=convert,
                           abstract_params=t5.abstract_params, source=os.fspath(path))
