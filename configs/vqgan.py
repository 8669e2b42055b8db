"""MaskGIT VQGAN (f16, 1024 codes): a 2D conv tokenizer, trained with pixel + GAN losses.

  python tools/train.py --config configs/vqgan.py:res=256 --workdir /tmp/vqgan
  python tools/train.py --config configs/vqgan.py:tiny --workdir /tmp/vqgan_tiny

The full recipe adds a perceptual term (needs a feature-network weights file: set
config.loss.perceptual and config.perceptual_weights) and a PatchGAN discriminator with hinge + LeCAM
(config.disc, from jaxtok.nn.discriminator).
"""
from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, res=256, codebook=1024, tiny=False)
  c = common.base_config()
  c.model = ml_collections.ConfigDict(dict(
      name="vqgan", image_size=a.res, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
      z_channels=256, codebook_size=a.codebook, num_groups=32, commitment_cost=0.25,
      dtype="bfloat16"))
  c.total_steps = 500_000
  c.data.image_size = a.res
  c.data.batch_size = 256
  c.optim.update(lr=1e-4, warmup_steps=5_000, end_lr=1e-5, b1=0.9, b2=0.999, wd=1e-4)
  c.loss.update(l1=0.0, l2=1.0)
  if a.tiny:
    common.tiny_training(c)
    c.model.update(image_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=8,
                   codebook_size=32, num_groups=4, dtype="float32")
    c.ema_decay = 0.9
  return c
