"""MaskGIT VQGAN (f16, 1024 codes): a 2D conv tokenizer, trained with pixel + GAN losses.

  python tools/train.py --config configs/vqgan.py:res=256 --workdir /tmp/vqgan
  python tools/train.py --config configs/vqgan.py:tiny --workdir /tmp/vqgan_tiny
  python tools/train.py --config configs/vqgan.py:res=256,gan --workdir /tmp/vqgan_gan

Arguments: res, codebook, quantizer (vq, fsq, lfq, bsq, rvq, rfsq, binary; the non-vq kinds get a
narrower latent: z_channels 6 with FSQ levels (8, 8, 8, 5, 5, 5), 12 for lfq/bsq/binary), gan (add a PatchGAN discriminator with hinge + LeCAM, weight 0.1 from step
20k; MaskGIT's own VQGAN uses a StyleGAN discriminator, which jaxtok does not implement), tiny.
The full recipe also adds a perceptual term (needs a feature-network weights file: set
config.loss.perceptual and config.loss.perceptual_weights).
"""
from __future__ import annotations

import ml_collections

from jaxtok.configs import common


QUANTIZERS = ("vq", "fsq", "lfq", "bsq", "rvq", "rfsq", "binary")


def _quantizer_fields(m: ml_collections.ConfigDict, quantizer: str) -> None:
  """The latent width and options each non-vq kind needs (vq keeps the released z_channels)."""
  if quantizer not in QUANTIZERS:
    raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {quantizer!r}")
  if quantizer in ("fsq", "rfsq"):
    m.z_channels, m.fsq_levels = 6, (8, 8, 8, 5, 5, 5)
  if quantizer in ("lfq", "bsq", "binary"):
    m.z_channels = 12
  if quantizer in ("rvq", "rfsq"):
    m.quantizer_options = dict(num_quantizers=2)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, res=256, codebook=1024, quantizer="vq", gan=False, tiny=False)
  c = common.base_config()
  c.model = ml_collections.ConfigDict(dict(
      name="vqgan", image_size=a.res, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
      z_channels=256, codebook_size=a.codebook, num_groups=32, commitment_cost=0.25,
      quantizer=a.quantizer, dtype="bfloat16"))
  _quantizer_fields(c.model, a.quantizer)
  c.total_steps = 500_000
  c.data.image_size = a.res
  c.data.batch_size = 256
  c.optim.update(lr=1e-4, warmup_steps=5_000, end_lr=1e-5, b1=0.9, b2=0.999, wd=1e-4)
  c.loss.update(l1=0.0, l2=1.0)
  if a.gan:
    common.add_gan(c, weight=0.1, start=20_000, lecam=0.001, disc_lr=1e-4)
  if a.tiny:
    common.tiny_training(c)
    c.model.update(image_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=8,
                   codebook_size=32, num_groups=4, dtype="float32")
    _quantizer_fields(c.model, a.quantizer)
    c.ema_decay = 0.9
  return c
