"""One-D-Piece (arXiv 2501.10064): TiTok with tail token drop, decodable from any token prefix.

  python tools/train.py --config configs/onedpiece.py:main --workdir /tmp/odp_main
  python tools/train.py --config configs/onedpiece.py:size=S,tokens=256 --workdir /tmp/odp
  python tools/train.py --config configs/onedpiece.py:tiny --workdir /tmp/odp_tiny

`train_forward` keeps one prefix length n ~ U{1..K} per batch (the tail is masked in the decoder), so
quality rises with the number of tokens kept at inference.

"main": the default job. A small One-D-Piece trained on random crops of the bundled photographs on a
2-core CPU in about 12 minutes, then a grid of held-out reconstructions at several token counts and
a JSON of PSNR/SSIM per count.
"""
from __future__ import annotations

import ml_collections

from configs import common
from configs import titok


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  main = arg is not None and arg.strip() == "main"
  a = common.parse_arg(None if main else arg, size="S", tokens=256, recipe="single", quantizer="vq",
                       res=256, tiny=False)
  c = titok.get_config(f"size={a.size},tokens={a.tokens},recipe={a.recipe},quantizer={a.quantizer},"
                       f"res={a.res},tiny={a.tiny}")
  c.model.name = "onedpiece"
  k = c.model.num_latent_tokens
  c.eval.token_counts = sorted({max(1, k // 8), max(1, k // 4), max(1, k // 2), k})
  if main:
    return main_config()
  return c


def main_config() -> ml_collections.ConfigDict:
  """The CPU main job: 32x32 crops, patch 4 (64 patches), 32 FSQ tokens, ViT width 128."""
  c = common.base_config()
  c.model = ml_collections.ConfigDict(dict(
      name="onedpiece", image_size=32, patch_size=4,
      encoder_width=128, encoder_depth=2, encoder_heads=4,
      decoder_width=128, decoder_depth=2, decoder_heads=4,
      num_latent_tokens=32, quantizer="fsq", token_size=6, fsq_levels=(8, 8, 8, 5, 5, 5),
      legacy_reshape=False, decoder_head="pixels", dtype="float32", remat=False))
  # Measured on the shared 2-core CPU (2026-11-22): ~0.45 CPU-s per step at batch 16; 2000 steps took
  # 9.6 min of training (3.5 steps/s with light contention) plus ~1 min compile and final eval.
  # Result: held-out PSNR 19.2 / 19.4 / 19.4 / 19.4 dB at 4 / 8 / 16 / 32 tokens -- BELOW the 20 dB
  # target, and the reconstructions are close to flat mean colours (the tokens carry little spatial
  # detail yet). At lr 2e-3 the FSQ codes collapsed (perplexity < 2); lr 1e-3 was worse at step 500
  # (11.3 vs 15.4 dB); a gradient-trained VQ codebook stayed at ~30 used codes.
  c.total_steps = 2000
  c.log_every = 50
  c.eval_every = 500
  c.ckpt_every = 500
  c.data.update(image_size=32, batch_size=16, heldout=16, max_scale=4)
  c.optim.update(lr=7e-4, warmup_steps=200, end_lr=5e-5, b1=0.9, b2=0.99, wd=1e-4, clip=1.0)
  c.loss.update(l1=0.0, l2=1.0)
  c.ema_decay = 0.99
  c.eval.token_counts = [4, 8, 16, 32]
  return c
