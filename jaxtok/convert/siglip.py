"""Hugging Face SigLIP vision towers -> `nn.siglip.SigLIPVision` parameters.

Key map (transformers `SiglipVisionModel` / the vision half of `SiglipModel`, keys under
`vision_model.`; the default `prefix`):

  embeddings.patch_embedding.weight [W, 3, p, p]  -> patch_embed.kernel [p*p*3, W] (transpose(2,3,1,0))
  embeddings.patch_embedding.bias                 -> patch_embed.bias
  embeddings.position_embedding.weight [N, W]     -> pos_embed [N, W]
  encoder.layers.i.layer_norm1 / layer_norm2      -> blocks.blocks.i.norm1 / norm2 (.scale, .bias)
  encoder.layers.i.self_attn.{q,k,v}_proj.weight  -> blocks.blocks.i.attn.qkv [W, 3, H, E]
      [W, W] each (torch Linear: y = x w^T)           (stack of w.T along axis 1, heads split)
  encoder.layers.i.self_attn.{q,k,v}_proj.bias    -> blocks.blocks.i.attn.qkv_bias [3, H, E]
  encoder.layers.i.self_attn.out_proj             -> blocks.blocks.i.attn.out [H, E, W], .out_bias
  encoder.layers.i.mlp.fc1 / fc2                  -> blocks.blocks.i.mlp.up / down (kernel = w.T)
  post_layernorm                                  -> norm
  head.probe [1, 1, W]                            -> head.probe [W]
  head.attention.in_proj_weight [3W, W], _bias    -> head.attn.qkv [W, 3, H, E], .qkv_bias
  head.attention.out_proj                         -> head.attn.out, .out_bias
  head.layernorm, head.mlp.fc1 / fc2              -> head.norm, head.mlp.up / down

The MAP head is optional (`head` in the config: read off the file when not given); a file with a
head loaded into a config without one reports the head's keys as unexpected. Every other key is an
error. Files are read with `convert.common.read_checkpoint` (safetensors or torch weights_only).
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping

import numpy as np

from jaxtok.convert import common

# width -> heads of the released towers (not visible in the tensor shapes).
_HEADS = {768: 12, 1024: 16, 1152: 16}
_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)$")
PREFIX = "vision_model."
WEIGHTS_HELP = ("a Hugging Face SigLIP checkpoint (model.safetensors of google/siglip-so400m-patch14-384, "
                "TokenFlow's teacher, or google/siglip-base-patch16-224 ...); jaxtok never downloads it")


def infer_config(flat: Mapping[str, np.ndarray], num_heads: int | None = None) -> dict[str, Any]:
  """A jaxtok SigLIP config read off the tensor shapes (heads: `num_heads`, else the released
  widths' 768/1024/1152 -> 12/16/16)."""
  try:
    w = flat["embeddings.patch_embedding.weight"]
    n = int(flat["embeddings.position_embedding.weight"].shape[0])
    hidden = int(flat["encoder.layers.0.mlp.fc1.weight"].shape[0])
  except KeyError as e:
    raise ValueError(f"not a SigLIP vision state dict (no tensor {e}); keys start with "
                     f"{sorted({k.split('.')[0] for k in flat})[:10]} (strip 'vision_model.' with "
                     f"prefix)") from None
  width, p = int(w.shape[0]), int(w.shape[-1])
  if num_heads is None and width not in _HEADS:
    raise ValueError(f"SigLIP width {width} is not a released size ({sorted(_HEADS)}); pass a config "
                     f"with num_heads")
  side = math.isqrt(n)
  if side * side != n:
    raise ValueError(f"SigLIP position_embedding has {n} rows, not a square grid")
  depth = len({int(m.group(1)) for k in flat for m in [_LAYER.match(k)] if m})
  return dict(width=width, depth=depth, num_heads=num_heads or _HEADS[width], mlp_hidden=hidden,
              patch_size=p, image_size=side * p, head="head.probe" in flat)


def _dense(dst: str, kind: str, v: np.ndarray) -> dict[str, np.ndarray]:
  return {f"{dst}.kernel": v.T} if kind == "weight" else {f"{dst}.bias": v}


def _norm(dst: str, kind: str, v: np.ndarray) -> dict[str, np.ndarray]:
  return {f"{dst}.{'scale' if kind == 'weight' else 'bias'}": v}


def convert(flat: Mapping[str, np.ndarray], num_heads: int) -> dict[str, np.ndarray]:
  """HF names and layouts -> jaxtok names (module docstring); unknown keys pass through so that
  `fill_state` reports them."""
  out: dict[str, np.ndarray] = {}
  qkv: dict[str, dict[str, np.ndarray]] = {}  # "blocks.blocks.i.attn" -> {"q.weight": ..., ...}
  for key, value in flat.items():
    v = np.asarray(value, np.float32)
    layer, _, kind = key.rpartition(".")
    if key == "embeddings.patch_embedding.weight":
      out["patch_embed.kernel"] = v.transpose(2, 3, 1, 0).reshape(-1, v.shape[0])
    elif key == "embeddings.patch_embedding.bias":
      out["patch_embed.bias"] = v
    elif key == "embeddings.position_embedding.weight":
      out["pos_embed"] = v
    elif layer in ("post_layernorm", "head.layernorm"):
      out.update(_norm("norm" if layer == "post_layernorm" else "head.norm", kind, v))
    elif key == "head.probe":
      out["head.probe"] = v.reshape(-1)
    elif key == "head.attention.in_proj_weight":
      width = v.shape[1]
      out["head.attn.qkv"] = v.reshape(3, width, width).transpose(2, 0, 1).reshape(
          width, 3, num_heads, width // num_heads)
    elif key == "head.attention.in_proj_bias":
      out["head.attn.qkv_bias"] = v.reshape(3, num_heads, -1)
    elif layer in ("head.attention.out_proj", "head.mlp.fc1", "head.mlp.fc2"):
      dst = {"head.attention.out_proj": "head.attn.out", "head.mlp.fc1": "head.mlp.up",
             "head.mlp.fc2": "head.mlp.down"}[layer]
      out.update(_out(dst, kind, v, num_heads) if dst == "head.attn.out" else _dense(dst, kind, v))
    elif (m := _LAYER.match(key)) is not None:
      dst, name = f"blocks.blocks.{m.group(1)}.", m.group(2)
      sub, _, kind = name.rpartition(".")
      if sub in ("layer_norm1", "layer_norm2"):
        out.update(_norm(dst + "norm" + sub[-1], kind, v))
      elif sub in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        qkv.setdefault(dst + "attn", {})[sub[-6] + "." + kind] = v
      elif sub == "self_attn.out_proj":
        out.update(_out(dst + "attn.out", kind, v, num_heads))
      elif sub in ("mlp.fc1", "mlp.fc2"):
        out.update(_dense(dst + ("mlp.up" if sub == "mlp.fc1" else "mlp.down"), kind, v))
      else:
        out[key] = v
    else:
      out[key] = v
  for dst, parts in qkv.items():
    names = [f"{c}.weight" for c in "qkv"] + [f"{c}.bias" for c in "qkv"]
    if any(n not in parts for n in names):  # leave the pieces under their own names: the shape
      out.update({f"{dst}.{n}": a for n, a in parts.items()})  # check names them
      continue
    out[dst + ".qkv"] = fuse_qkv([parts[f"{c}.weight"] for c in "qkv"], num_heads)
    out[dst + ".qkv_bias"] = np.stack([parts[f"{c}.bias"] for c in "qkv"]).reshape(3, num_heads, -1)
  return out


def fuse_qkv(weights: list[np.ndarray], heads: int) -> np.ndarray:
  """torch Linear weights q, k, v [H*E, W] each -> jaxtok's fused qkv [W, 3, H, E]."""
  width = weights[0].shape[1]
  return np.stack([w.T for w in weights], axis=1).reshape(width, 3, heads, -1)


def _out(dst: str, kind: str, v: np.ndarray, heads: int) -> dict[str, np.ndarray]:
  """torch out-projection Linear [W, H*E] -> out [H, E, W] (and its bias)."""
  if kind == "weight":
    return {dst: v.T.reshape(heads, -1, v.shape[0])}
  return {dst + "_bias": v}


def read(path: str | os.PathLike, *, prefix: str = PREFIX) -> dict[str, np.ndarray]:
  """The tensors of `path` under `prefix` (removed); a file without the prefix is read whole when
  it already holds `embeddings.patch_embedding.weight` (a bare vision-tower state dict)."""
  flat, _ = common.read_checkpoint(path)
  if prefix:
    picked = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
    if not picked and "embeddings.patch_embedding.weight" not in flat:
      raise ValueError(f"{os.fspath(path)}: no tensor starts with prefix {prefix!r}")
    flat = picked or flat
  return flat


def load(path: str | os.PathLike, config: Mapping[str, Any] | None = None, *, prefix: str = PREFIX):
  """(jaxtok SigLIP config, nnx.State of `nn.siglip.SigLIPVision`) from a HF SigLIP weights file.

  config: None (read off the shapes) or a mapping of `nn.siglip` fields overriding them. Raises
  ValueError for a file that does not exist (naming what to get) and naming every missing,
  unexpected or mis-shaped tensor.
  """
  from jaxtok.nn import siglip
  overrides = common.tower_overrides(config, "SigLIP")
  if not os.path.exists(os.fspath(path)):
    raise ValueError(f"SigLIP weights {os.fspath(path)!r} do not exist; expected {WEIGHTS_HELP}")
  return common.fill_tower(read(path, prefix=prefix), overrides, infer_config=infer_config,
                           convert=convert, abstract_params=siglip.abstract_params,
                           source=os.fspath(path))
