"""The continuous 1D tokenizer (TiTok with a diagonal-Gaussian bottleneck, kl_weight 1e-6).

  python tools/train.py --config configs/vae.py:size=B,tokens=64 --workdir /tmp/vae
  python tools/train.py --config configs/vae.py:tiny --workdir /tmp/vae_tiny
"""
from __future__ import annotations

import ml_collections

from jaxtok.configs import common
from jaxtok.configs import titok


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, size="B", tokens=64, res=256, tiny=False)
  c = titok.get_config(f"size={a.size},tokens={a.tokens},quantizer=vae,res={a.res},tiny={a.tiny}")
  c.model.name = "vae"
  c.model.quantizer = "vae"
  c.model.token_size = 16
  c.model.kl_weight = 1e-6
  if a.tiny:
    c.model.token_size = 4
    c.eval.token_counts = [c.model.num_latent_tokens]
  return c
