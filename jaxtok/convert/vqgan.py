"""The MaskGIT VQGAN (`maskgit-vqgan-imagenet-f16-256.bin`, bytedance/1d-tokenizer
`modeling/modules/maskgit_vqgan.py`, open-muse's port of google-research/maskgit) -> jaxtok.

Key map (official -> jaxtok `tokenizers.vqgan.VQGAN`; the same conv network is TiTok's two-stage
pixel decoder, under `pixel_decoder.` / `pixel_quantize.` there):

  {encoder,decoder}.conv_in / conv_out / upsample_conv .weight [O, I, kh, kw]  -> .kernel [kh, kw, I, O]
  ... .bias                                                                      -> .bias
  ...norm1 / norm2 / norm_out .weight (GroupNorm)                                -> .scale
  encoder.down.i.block.j.*, encoder.mid.j.*, decoder.mid.j.*, decoder.up.i.*     -> same paths
  quantize.embedding.weight [P, Z]                                               -> codebook

Every other key is an error. The released model is `RELEASED["maskgit-vqgan_imagenet_f16_256"]`
(ch 128, mult (1, 1, 2, 2, 4), 2 residual blocks, z 256, 1024 codes, 256 px), which are jaxtok's
VQGAN defaults.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np

from jaxtok.convert import common

RELEASED: dict[str, dict[str, Any]] = {
    # HF fun-research/TiTok, file maskgit-vqgan-imagenet-f16-256.bin (the TiTok stage-1 teacher).
    "maskgit-vqgan_imagenet_f16_256": dict(
        name="vqgan", image_size=256, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
        z_channels=256, codebook_size=1024, num_groups=32),
}

_NORM = re.compile(r"(norm1|norm2|norm_out)\.weight$")


def conv_net_params(flat: Mapping[str, np.ndarray], src: str, dst: str) -> dict[str, np.ndarray]:
  """The encoder/decoder conv tensors under `src` (e.g. "decoder.") as jaxtok parameters under
  `dst` (e.g. "pixel_decoder."). Only keys starting with `src` are read."""
  out = {}
  for key, value in flat.items():
    if not key.startswith(src):
      continue
    name = dst + key[len(src):]
    value = np.asarray(value)
    if _NORM.search(name):
      name = name[:-len("weight")] + "scale"
    elif name.endswith(".weight") and value.ndim == 4:
      name, value = name[:-len("weight")] + "kernel", value.transpose(2, 3, 1, 0)
    out[name] = value
  return out


def convert(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Official VQGAN state dict (encoder.*, decoder.*, quantize.embedding.weight) -> jaxtok names."""
  out = conv_net_params(flat, "encoder.", "encoder.")
  out.update(conv_net_params(flat, "decoder.", "decoder."))
  for key, value in flat.items():
    if key == "quantize.embedding.weight":
      out["codebook"] = np.asarray(value)
    elif not key.startswith(("encoder.", "decoder.")):
      out[key] = np.asarray(value)  # reported as unexpected by the shape check
  return out


def infer_config(flat: Mapping[str, np.ndarray], image_size: int = 256) -> dict[str, Any]:
  """A jaxtok VQGAN config read off the tensor shapes (GroupNorm groups assumed 32)."""
  try:
    ch = int(flat["encoder.conv_in.weight"].shape[0])
    levels = sorted({int(m.group(1)) for k in flat for m in [re.match(r"encoder\.down\.(\d+)\.", k)] if m})
    mult = tuple(int(flat[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) // ch for i in levels)
    blocks = len({k.split(".")[4] for k in flat if k.startswith("encoder.down.0.block.")})
    z, p = int(flat["encoder.conv_out.weight"].shape[0]), int(flat["quantize.embedding.weight"].shape[0])
  except (KeyError, IndexError) as e:
    raise ValueError(f"not a MaskGIT VQGAN state dict (no tensor {e}); keys start with "
                     f"{sorted({k.split('.')[0] for k in flat})}") from None
  return dict(name="vqgan", image_size=image_size, ch=ch, ch_mult=mult, num_res_blocks=blocks,
              z_channels=z, codebook_size=p, num_groups=32)


def load(path: str | os.PathLike, config: Mapping[str, Any] | str | None = None):
  """(jaxtok config, nnx.State of a `tokenizers.vqgan.VQGAN`) from an official VQGAN file.

  config: a jaxtok config (mapping, JSON string or file), a RELEASED name, or None (read off the
  shapes). Raises ValueError
  naming every missing, unexpected or mis-shaped tensor.
  """
  from jaxtok.tokenizers import api
  flat, _ = common.read_checkpoint(path)
  cfg = common.config_arg(config, RELEASED) if config is not None else infer_config(flat)
  tok = api.build(cfg)
  return cfg, common.fill_state(tok.abstract_params(), convert(flat), source=os.fspath(path))
