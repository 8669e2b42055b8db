"""Hugging Face OLMo (v1) checkpoints -> `nn.olmo.Olmo` parameters.

A checkpoint is a directory as `save_pretrained` writes it (amd/AMD-OLMo-1B's layout):
config.json plus model.safetensors, or model.safetensors.index.json and its shards, or (read only
when torch is importable, through `torch.load(weights_only=True)`) pytorch_model.bin. The sizes
come from config.json (translated by `config_from_hf`) and are checked against every tensor's
shape; a weights file given instead of the directory reads the config.json beside it.

Key map (`OlmoForCausalLM`; tensors under `model.`):
  model.embed_tokens.weight [V, W]                    -> embed [V, W]
  model.layers.i.self_attn.{q,k,v}_proj.weight [W, W] -> layers.blocks.i.attn.qkv [W, 3, H, E]
      (torch Linear: y = x w^T; stacked w.T, heads split)
  model.layers.i.self_attn.o_proj.weight [W, W]       -> layers.blocks.i.attn.out [H, E, W]
  (+ their biases when attention_bias: qkv_bias [3, H, E], out_bias [W])
  model.layers.i.mlp.{gate,up,down}_proj.weight       -> layers.blocks.i.mlp.{gate,up,down}.kernel (w.T)
The LayerNorms have no parameters. `lm_head.weight` (absent when tie_word_embeddings, as in
AMD-OLMo-1B) is ignored: the tower's outputs are hidden states, never logits. Any other key is an
error (`common.fill_state` names it).
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import numpy as np

from jaxtok.convert import common
from jaxtok.convert.siglip import fuse_qkv

_LAYER = re.compile(r"model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)_proj\.(weight|bias)$")
_IGNORED = ("lm_head.",)
WEIGHTS_HELP = ("a Hugging Face OLMo checkpoint directory (config.json + model.safetensors, or "
                "model.safetensors.index.json and its shards, of e.g. amd/AMD-OLMo-1B); jaxtok "
                "never downloads it")
# HF config.json field -> nn.olmo field
_HF_FIELDS = {"hidden_size": "width", "num_hidden_layers": "depth",
              "num_attention_heads": "num_heads", "intermediate_size": "mlp_hidden",
              "vocab_size": "vocab_size", "rope_theta": "rope_theta", "clip_qkv": "clip_qkv",
              "attention_bias": "attention_bias"}


def config_from_hf(hf: Mapping[str, Any]) -> dict[str, Any]:
  """An `nn.olmo` config from a HF OLMo config.json (dict). Raises ValueError for what the tower
  does not implement: another model_type, grouped kv heads, a head_dim other than W / H, an
  activation other than silu, rope_scaling."""
  hf = dict(hf)
  if hf.get("model_type", "olmo") != "olmo":
    raise ValueError(f"config.json model_type must be 'olmo' (OLMo v1; OLMo-2 'olmo2' has other "
                     f"norms), got {hf.get('model_type')!r}")
  missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                         "intermediate_size", "vocab_size") if k not in hf]
  if missing:
    raise ValueError(f"config.json lacks OLMo field(s) {missing}")
  heads = hf["num_attention_heads"]
  if hf.get("num_key_value_heads") not in (None, heads):
    raise ValueError(f"config.json num_key_value_heads must equal num_attention_heads {heads} "
                     f"(grouped kv heads are not implemented), got {hf['num_key_value_heads']}")
  if hf.get("head_dim") not in (None, hf["hidden_size"] // heads):
    raise ValueError(f"config.json head_dim must be hidden_size / num_attention_heads = "
                     f"{hf['hidden_size'] // heads}, got {hf['head_dim']}")
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"config.json hidden_act must be 'silu' (SwiGLU), got {hf['hidden_act']!r}")
  if hf.get("rope_scaling") is not None:
    raise ValueError(f"config.json rope_scaling must be null (plain RoPE), got {hf['rope_scaling']!r}")
  cfg = {ours: hf[theirs] for theirs, ours in _HF_FIELDS.items() if theirs in hf}
  cfg.setdefault("rope_theta", 10000.0)  # OlmoConfig's defaults
  cfg.setdefault("attention_bias", False)
  cfg["rope_theta"] = float(cfg["rope_theta"])
  if cfg.get("clip_qkv") is not None:
    cfg["clip_qkv"] = float(cfg["clip_qkv"])
  return cfg


def convert(flat: Mapping[str, np.ndarray], num_heads: int) -> dict[str, np.ndarray]:
  """HF names and layouts -> jaxtok names (module docstring); `lm_head.*` dropped, unknown keys
  passed through so that `fill_state` reports them."""
  out: dict[str, np.ndarray] = {}
  qkv: dict[str, dict[str, np.ndarray]] = {}  # "layers.blocks.i.attn" -> {"q.weight": ...}
  for key, value in flat.items():
    if key.startswith(_IGNORED):
      continue
    v = np.asarray(value)  # dtype kept (fill_state casts): no float32 copy of a 1B-value file
    m = _LAYER.match(key)
    if key == "model.embed_tokens.weight":
      out["embed"] = v
    elif m is None:
      out[key] = v
    else:
      dst, proj, kind = f"layers.blocks.{m.group(1)}.", m.group(3), m.group(4)
      if m.group(2) == "self_attn" and proj in ("q", "k", "v"):
        qkv.setdefault(dst + "attn", {})[f"{proj}.{kind}"] = v
      elif m.group(2) == "self_attn" and proj == "o":
        out[dst + ("attn.out" if kind == "weight" else "attn.out_bias")] = (
            v.T.reshape(num_heads, -1, v.shape[0]) if kind == "weight" else v)
      elif m.group(2) == "mlp" and proj in ("gate", "up", "down") and kind == "weight":
        out[dst + f"mlp.{proj}.kernel"] = v.T
      else:
        out[key] = v
  for dst, parts in qkv.items():
    weights = [parts.get(f"{c}.weight") for c in "qkv"]
    if any(w is None for w in weights) or len({w.shape for w in weights}) != 1:
      out.update({f"{dst}.{n}": a for n, a in parts.items()})  # fill_state names the odd pieces
      continue
    out[dst + ".qkv"] = fuse_qkv(weights, num_heads)
    biases = [parts.pop(f"{c}.bias", None) for c in "qkv"]
    if all(b is not None for b in biases):
      out[dst + ".qkv_bias"] = np.stack(biases).reshape(3, num_heads, -1)
    else:
      out.update({f"{dst}.{c}.bias": b for c, b in zip("qkv", biases) if b is not None})
  return out


def read(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(HF config.json as a dict, every tensor) of a checkpoint directory (or of a weights file with
  config.json beside it). Raises ValueError naming what is missing."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise ValueError(f"OLMo checkpoint {path!r} does not exist; expected {WEIGHTS_HELP}")
  folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
  config_path = os.path.join(folder, "config.json")
  if not os.path.isfile(config_path):
    raise ValueError(f"{folder} holds no config.json (the sizes come from it); expected "
                     f"{WEIGHTS_HELP}")
  with open(config_path) as f:
    hf = json.load(f)
  if not os.path.isdir(path):
    return hf, common.read_checkpoint(path)[0]
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.isfile(os.path.join(path, "model.safetensors")):
    files = [os.path.join(path, "model.safetensors")]
  elif os.path.isfile(index):
    with open(index) as f:
      weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise ValueError(f"{index}: no weight_map (expected {{tensor name: shard file}})")
    files = [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
  elif os.path.isfile(os.path.join(path, "pytorch_model.bin")):
    files = [os.path.join(path, "pytorch_model.bin")]  # torch weights_only (common.read_checkpoint)
  else:
    raise ValueError(f"{path} holds no model.safetensors, model.safetensors.index.json or "
                     f"pytorch_model.bin; expected {WEIGHTS_HELP}")
  flat: dict[str, np.ndarray] = {}
  for file in files:
    flat.update(common.read_checkpoint(file)[0])
  return hf, flat


def load(path: str | os.PathLike, config: Mapping[str, Any] | None = None):
  """(jaxtok OLMo config, nnx.State of `nn.olmo.Olmo`) from a HF OLMo checkpoint (`read`).

  config: None, or a mapping of `nn.olmo` fields overriding config.json's (e.g. dtype,
  scan_layers). Raises ValueError naming every missing, unexpected or mis-shaped tensor.
  """
  from jaxtok.nn import olmo
  overrides = common.tower_overrides(config, "OLMo")
  hf, flat = read(path)
  # The sizes come from config.json (heads are not visible in the q/k/v shapes).
  return common.fill_tower(flat, overrides, infer_config=lambda _flat, _heads: config_from_hf(hf),
                           convert=convert, abstract_params=olmo.abstract_params,
                           source=os.fspath(path))
