"""Released GPSToken weights (xtudbxk/GPSToken `models/gpstoken.py`, GPSToken-S64 / M128 / L256) ->
jaxtok `tokenizers.gpstoken.GPSToken` parameters.

Key map (official -> jaxtok; conv weights [O, I, kh, kw] -> kernels [kh, kw, I, O], Linear weights
[O, I] -> kernels [I, O], GroupNorm / LayerNorm weight -> scale):

  preprocess_img.0.*                                     stem.*
  preprocess_img.{1,2}.{norm1,conv1,norm2,conv2}.*       stem_blocks.{0,1}.*
  preprocess_img.{1,2}.temb_proj.*                       dropped: the release calls these blocks
                                                         without a timestep embedding (unused weights)
  roialign_layer.* (1x1 conv)                            roi_proj.*
  gps_embed.weight [1, W]                                gauss_embed.embedding
  gps_embed_layer.{0,2}.*                                geom_fc1.*, geom_fc2.*
  attnblocks.i.roimlp.* [1, r*r]                         roi_mlps.i.*
  attnblocks.i.ln1 / ln2                                 blocks.i.norm1 / norm2
  attnblocks.i.attn1.in_proj_weight / in_proj_bias       blocks.i.attn.qkv [W, 3, H, E] / qkv_bias
  attnblocks.i.attn1.out_proj.*                          blocks.i.attn.out [H, E, W] / out_bias
  attnblocks.i.mlp.{0,2}.*                               blocks.i.mlp.up / down
  to_gps.0 / to_gps.1                                    to_delta / to_features
  decoder.conv_in / conv_out / norm_out                  decoder.conv_in / conv_out / norm_out
  decoder.mid.block_1 / block_2                          decoder.mid.res1 / res2
  decoder.mid.attn_1.{norm, q, k, v, proj_out}           decoder.mid.attn.{norm, attn.qkv(_bias), attn.out(_bias)}
  decoder.up.i.block.j.{norm1,conv1,norm2,conv2}         decoder.up_blocks.i.j.*
  decoder.up.i.block.j.nin_shortcut                      decoder.up_blocks.i.j.shortcut
  decoder.up.i.upsample.conv                             decoder.up_convs.(i-1)

  loss.*                                                 dropped: training-loss modules (discriminator,
                                                         perceptual nets); the release's
                                                         inference loads only the keys its model has

Any other key is refused by name (ValueError listing missing, unexpected and mis-shaped tensors).
The released files (HF xtudbxk/GPSToken, `gpstoken_{s64,m128,l256}.safetensors`) were not available
here; the layout is checked against the release's classes (tests/convert/test_gpstoken.py).
The number of heads (8) and of Gaussians are not in the weights: the RELEASED configs give them.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np

from jaxtok.convert import common

_RELEASE = dict(name="gpstoken", image_size=256, feature_dim=16, min_size=8, split_weight=2.5,
                width=512, depth=30, num_heads=8, stem_channels=128, roi_size=8, render_size=64,
                dmax=3.0, dec_ch=128, dec_ch_mult=(1, 2, 4), dec_num_res_blocks=2, num_groups=32)
# configs/gpstoken_{s64,m128,l256}.yaml: the same network, only gps_num differs.
RELEASED: dict[str, dict[str, Any]] = {
    f"gpstoken_{tag}": dict(_RELEASE, num_gaussians=n)
    for tag, n in (("s64", 64), ("m128", 128), ("l256", 256))}

_DROPPED = re.compile(r"^(preprocess_img\.\d+\.temb_proj\.(weight|bias)|loss\..+)$")
_RENAMES = (  # (official pattern, jaxtok replacement); first match wins
    (r"^preprocess_img\.0\.", "stem."),
    (r"^preprocess_img\.(\d+)\.", lambda m: f"stem_blocks.{int(m.group(1)) - 1}."),
    (r"^roialign_layer\.", "roi_proj."),
    (r"^gps_embed\.weight$", "gauss_embed.embedding"),
    (r"^gps_embed_layer\.0\.", "geom_fc1."),
    (r"^gps_embed_layer\.2\.", "geom_fc2."),
    (r"^attnblocks\.(\d+)\.roimlp\.", r"roi_mlps.\1."),
    (r"^attnblocks\.(\d+)\.ln1\.", r"blocks.\1.norm1."),
    (r"^attnblocks\.(\d+)\.ln2\.", r"blocks.\1.norm2."),
    (r"^attnblocks\.(\d+)\.mlp\.0\.", r"blocks.\1.mlp.up."),
    (r"^attnblocks\.(\d+)\.mlp\.2\.", r"blocks.\1.mlp.down."),
    (r"^to_gps\.0\.", "to_delta."),
    (r"^to_gps\.1\.", "to_features."),
    (r"^decoder\.mid\.block_1\.", "decoder.mid.res1."),
    (r"^decoder\.mid\.block_2\.", "decoder.mid.res2."),
    (r"^decoder\.mid\.attn_1\.norm\.", "decoder.mid.attn.norm."),
    (r"^decoder\.up\.(\d+)\.block\.(\d+)\.nin_shortcut\.", r"decoder.up_blocks.\1.\2.shortcut."),
    (r"^decoder\.up\.(\d+)\.block\.(\d+)\.", r"decoder.up_blocks.\1.\2."),
    (r"^decoder\.up\.(\d+)\.upsample\.conv\.", lambda m: f"decoder.up_convs.{int(m.group(1)) - 1}."),
    (r"^decoder\.(conv_in|conv_out|norm_out)\.", r"decoder.\1."),
)
_NORM = re.compile(r"(norm1|norm2|norm_out|norm)\.weight$")


def _tensor(name: str, value: np.ndarray) -> tuple[str, np.ndarray]:
  """One renamed tensor in jaxtok's layout (the name decides norm scale / conv / linear)."""
  if _NORM.search(name):
    return name[:-len("weight")] + "scale", value
  if name == "gauss_embed.embedding" or not name.endswith(".weight"):
    return name, value
  name = name[:-len("weight")] + "kernel"
  if value.ndim == 4:
    value = value.transpose(2, 3, 1, 0)
    return name, (value[0, 0] if name == "roi_proj.kernel" else value)
  return name, value.T


def _attention(flat: Mapping[str, np.ndarray], out: dict, heads: int) -> set[str]:
  """The fused q/k/v and output projections of the Gaussian blocks (torch MultiheadAttention) and of
  the decoder's mid attention (1x1 convs q, k, v, proj_out; one head); returns the keys used."""
  used = set()
  for key in flat:
    m = re.match(r"^attnblocks\.(\d+)\.attn1\.in_proj_weight$", key)
    if not m:
      continue
    p, dst = f"attnblocks.{m.group(1)}.attn1.", f"blocks.{m.group(1)}.attn."
    w, b = np.asarray(flat[p + "in_proj_weight"]), np.asarray(flat[p + "in_proj_bias"])
    wo, bo = np.asarray(flat[p + "out_proj.weight"]), np.asarray(flat[p + "out_proj.bias"])
    width = w.shape[1]
    out[dst + "qkv"] = w.reshape(3, heads, width // heads, width).transpose(3, 0, 1, 2)
    out[dst + "qkv_bias"] = b.reshape(3, heads, width // heads)
    out[dst + "out"] = wo.T.reshape(heads, width // heads, -1)
    out[dst + "out_bias"] = bo
    used |= {p + n for n in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")}
  p, dst = "decoder.mid.attn_1.", "decoder.mid.attn.attn."
  if p + "q.weight" in flat:
    qkv = [np.asarray(flat[p + f"{n}.weight"])[:, :, 0, 0] for n in "qkv"]  # [O, I] each
    out[dst + "qkv"] = np.stack([w.T for w in qkv], axis=1)[:, :, None, :]
    out[dst + "qkv_bias"] = np.stack([np.asarray(flat[p + f"{n}.bias"]) for n in "qkv"])[:, None]
    out[dst + "out"] = np.asarray(flat[p + "proj_out.weight"])[:, :, 0, 0].T[None]
    out[dst + "out_bias"] = np.asarray(flat[p + "proj_out.bias"])
    used |= {p + f"{n}.{t}" for n in ("q", "k", "v", "proj_out") for t in ("weight", "bias")}
  return used


def convert(flat: Mapping[str, np.ndarray], heads: int = 8) -> dict[str, np.ndarray]:
  """Official GPSToken state dict -> {jaxtok name: array}. Unknown keys pass through under their
  own names so that `common.fill_state` refuses them by name; temb_proj and loss.* are dropped
  (module doc)."""
  out: dict[str, np.ndarray] = {}
  used = _attention(flat, out, heads)
  for key, value in flat.items():
    if key in used or _DROPPED.match(key):
      continue
    for pattern, repl in _RENAMES:
      if re.match(pattern, key):
        name, value = _tensor(re.sub(pattern, repl, key), np.asarray(value))
        break
    else:
      name = key  # reported as unexpected by the shape check
    out[name] = value
  return out


def infer_config(flat: Mapping[str, np.ndarray], *, num_gaussians: int = 128,
                 image_size: int = 256) -> dict[str, Any]:
  """A jaxtok GPSToken config read off the tensor shapes; the number of Gaussians and the image size
  are not in the weights (defaults: M128 at 256 px), heads are the release's 8, GroupNorm 32."""
  try:
    width = int(flat["gps_embed.weight"].shape[1])
    depth = len({k.split(".")[1] for k in flat if k.startswith("attnblocks.")})
    roi = int(round(float(np.sqrt(flat["attnblocks.0.roimlp.weight"].shape[1]))))
    levels = sorted({int(k.split(".")[2]) for k in flat if k.startswith("decoder.up.")})
    outs = [int(flat[f"decoder.up.{i}.block.0.conv1.weight"].shape[0]) for i in levels]
    blocks = len({k.split(".")[4] for k in flat if k.startswith("decoder.up.0.block.")})
    cfg = dict(_RELEASE, num_gaussians=num_gaussians, image_size=image_size, width=width,
               depth=depth, roi_size=roi, stem_channels=int(flat["preprocess_img.0.weight"].shape[0]),
               feature_dim=int(flat["to_gps.1.weight"].shape[0]), dec_ch=outs[0],
               dec_ch_mult=tuple(o // outs[0] for o in outs), dec_num_res_blocks=blocks - 1,
               render_size=image_size // 2 ** (len(levels) - 1))
  except (KeyError, IndexError) as e:
    raise ValueError(f"not a GPSToken state dict (no tensor {e}); keys start with "
                     f"{sorted({k.split('.')[0] for k in flat})}") from None
  return cfg


def load(path: str | os.PathLike, config: Mapping[str, Any] | str | None = None):
  """(jaxtok config, nnx.State of a `tokenizers.gpstoken.GPSToken`) from a released GPSToken file
  (safetensors, or a torch file read weights_only; a `state_dict` / `model` wrapper is unwrapped by
  `common.read_checkpoint`).

  config: a RELEASED name (gpstoken_s64 / gpstoken_m128 / gpstoken_l256), a jaxtok config (mapping,
  JSON string or file), or None (read off the shapes, 128 Gaussians). Raises ValueError naming every
  missing, unexpected or mis-shaped tensor.
  """
  from jaxtok.tokenizers import api
  flat, _ = common.read_checkpoint(path)
  cfg = common.config_arg(config, RELEASED) if config is not None else infer_config(flat)
  tok = api.build(cfg)
  params = convert(flat, heads=int(cfg.get("num_heads", 8)))
  return cfg, common.fill_state(tok.abstract_params(), params, source=os.fspath(path))
