"""Official DINOv2 weights (facebookresearch/dinov2 hub files such as `dinov2_vitb14_reg4_pretrain.pth`)
-> jaxtok `nn.dinov2.DINOv2` parameters.

Key map (official state dict of `DinoVisionTransformer` built with block_chunks=0, as the hub does;
checked against `dinov2/models/vision_transformer.py` and `dinov2/layers/*` at b8931f7):

  cls_token [1, 1, W]                      -> cls_token [W]
  pos_embed [1, 1 + M*M, W]                -> pos_embed [1 + M*M, W]
  register_tokens [1, R, W]                -> register_tokens [R, W]
  mask_token [1, W]                        -> dropped (masked-image modelling in pretraining only)
  patch_embed.proj.weight [W, 3, p, p]     -> patch_embed.kernel [p*p*3, W] (w.transpose(2, 3, 1, 0))
  patch_embed.proj.bias                    -> patch_embed.bias
  blocks.i.norm1 / norm2 .weight, .bias    -> blocks.blocks.i.norm1 / norm2 .scale, .bias
  blocks.i.attn.qkv.weight [3W, W], .bias  -> blocks.blocks.i.attn.qkv [W, 3, H, E], .qkv_bias [3, H, E]
  blocks.i.attn.proj.weight [W, W], .bias  -> blocks.blocks.i.attn.out [H, E, W], .out_bias
  blocks.i.ls1.gamma, ls2.gamma [W]        -> blocks.blocks.i.ls1, ls2
  blocks.i.mlp.fc1 / fc2 (ffn "mlp")       -> blocks.blocks.i.mlp.up / down (.kernel = weight.T)
  blocks.i.mlp.w12 [2M, W] (ViT-g SwiGLU)  -> mlp.gate (rows :M) and mlp.up (rows M:), as
                                              SwiGLUFFN's x1, x2 = w12(x).chunk(2)
  blocks.i.mlp.w3 [W, M]                   -> mlp.down
  norm.weight, .bias                       -> norm.scale, .bias

Every other key is an error. A file of a block_chunks > 0 training checkpoint (`blocks.0.3.*`) or
with a `backbone.` / `teacher.backbone.` prefix needs `prefix` / re-keying first.
Files are read with `convert.common.read_checkpoint` (safetensors, or torch.load(weights_only=True)).
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping

import numpy as np

from jaxtok.convert import common

# width -> heads of the released sizes (the head count is not visible in the tensor shapes).
_HEADS = {384: 6, 768: 12, 1024: 16, 1536: 24}
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)$")


def infer_config(flat: Mapping[str, np.ndarray], num_heads: int | None = None) -> dict[str, Any]:
  """A jaxtok DINOv2 config read off the tensor shapes.

  Heads: `num_heads`, else those of the released widths (384/768/1024/1536 -> 6/12/16/24); the position
  interpolation settings are the hub's for the register count (antialias with registers, the 0.1
  offset without).
  """
  try:
    width = int(flat["cls_token"].shape[-1])
    w = flat["patch_embed.proj.weight"]
    n = int(flat["pos_embed"].shape[-2]) - 1
  except KeyError as e:
    raise ValueError(f"not a DINOv2 state dict (no tensor {e}); keys start with "
                     f"{sorted({k.split('.')[0] for k in flat})[:10]}") from None
  if num_heads is None and width not in _HEADS:
    raise ValueError(f"DINOv2 width {width} is not a released size ({sorted(_HEADS)}); pass a config "
                     f"with num_heads")
  depth = len({int(m.group(1)) for k in flat for m in [_BLOCK.match(k)] if m})
  m = math.isqrt(n)
  if m * m != n:
    raise ValueError(f"DINOv2 pos_embed has {n} patch rows, not a square grid")
  p = int(w.shape[-1])
  regs = int(flat["register_tokens"].shape[-2]) if "register_tokens" in flat else 0
  return dict(width=width, depth=depth, num_heads=num_heads or _HEADS[width], patch_size=p, image_size=m * p,
              num_registers=regs, ffn="swiglu" if "blocks.0.mlp.w12.weight" in flat else "mlp",
              layerscale=1.0 if "blocks.0.ls1.gamma" in flat else None)


def convert(flat: Mapping[str, np.ndarray], num_heads: int) -> dict[str, np.ndarray]:
  """Official names and layouts -> jaxtok names (see the module docstring); unknown keys pass
  through unchanged so that `fill_state` reports them."""
  out: dict[str, np.ndarray] = {}
  for key, value in flat.items():
    v = np.asarray(value, np.float32)
    if key == "mask_token":
      continue
    if key in ("cls_token", "pos_embed", "register_tokens"):
      out[key] = v.reshape(v.shape[-2:]) if key != "cls_token" else v.reshape(-1)
    elif key == "patch_embed.proj.weight":
      out["patch_embed.kernel"] = v.transpose(2, 3, 1, 0).reshape(-1, v.shape[0])
    elif key == "patch_embed.proj.bias":
      out["patch_embed.bias"] = v
    elif key in ("norm.weight", "norm.bias"):
      out["norm." + ("scale" if key.endswith("weight") else "bias")] = v
    elif (m := _BLOCK.match(key)) is not None:
      out.update(_block(f"blocks.blocks.{m.group(1)}.", m.group(2), v, num_heads, key))
    else:
      out[key] = v
  return out


def _block(dst: str, name: str, v: np.ndarray, heads: int, key: str) -> dict[str, np.ndarray]:
  if name in ("norm1.weight", "norm2.weight"):
    return {dst + name[:-len("weight")] + "scale": v}
  if name in ("norm1.bias", "norm2.bias"):
    return {dst + name: v}
  if name in ("ls1.gamma", "ls2.gamma"):
    return {dst + name[:3]: v}
  if name == "attn.qkv.weight":
    width = v.shape[1]
    return {dst + "attn.qkv": v.T.reshape(width, 3, heads, width // heads)}
  if name == "attn.qkv.bias":
    return {dst + "attn.qkv_bias": v.reshape(3, heads, -1)}
  if name == "attn.proj.weight":
    return {dst + "attn.out": v.T.reshape(heads, -1, v.shape[0])}
  if name == "attn.proj.bias":
    return {dst + "attn.out_bias": v}
  dense = {"mlp.fc1": "mlp.up", "mlp.fc2": "mlp.down", "mlp.w3": "mlp.down"}
  layer, _, kind = name.rpartition(".")
  if layer in dense:
    return {dst + dense[layer] + "." + ("kernel" if kind == "weight" else "bias"):
            v.T if kind == "weight" else v}
  if layer == "mlp.w12":
    half = v.shape[0] // 2
    pick = (lambda a: a.T) if kind == "weight" else (lambda a: a)
    suffix = "kernel" if kind == "weight" else "bias"
    return {dst + f"mlp.gate.{suffix}": pick(v[:half]), dst + f"mlp.up.{suffix}": pick(v[half:])}
  return {key: v}  # unknown: reported by the shape check


def read(path: str | os.PathLike, *, prefix: str = "") -> dict[str, np.ndarray]:
  """The official tensors of `path` (those under `prefix`, with it removed)."""
  flat, _ = common.read_checkpoint(path)
  if prefix:
    flat = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
    if not flat:
      raise ValueError(f"{os.fspath(path)}: no tensor starts with prefix {prefix!r}")
  return flat


def load(path: str | os.PathLike, config: Mapping[str, Any] | None = None, *, prefix: str = ""):
  """(jaxtok DINOv2 config, nnx.State of `nn.dinov2.DINOv2`) from an official weights file.

  config: None (read off the shapes, `infer_config`), or a mapping of fields (`nn.dinov2` fields or
  `size`) that override the inferred ones. Raises ValueError naming every missing, unexpected or
  mis-shaped tensor, or for a file that does not exist.
  """
  from jaxtok.nn import dinov2
  flat = read(path, prefix=prefix)
  return common.fill_tower(flat, common.tower_overrides(config, "DINOv2"), infer_config=infer_config,
                           convert=convert, abstract_params=dinov2.abstract_params,
                           source=os.fspath(path))
