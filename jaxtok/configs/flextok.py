"""FlexTok (arXiv 2502.13967): 1D registers with a causal encoder, FSQ, nested dropout and a
rectified-flow decoder (the flow loss comes from the model's train_forward; there are no pixel
losses because the decoder samples).

  python tools/train.py --config configs/flextok.py:size=d18_d28 --workdir /tmp/flextok
  python tools/train.py --config configs/flextok.py:tiny --workdir /tmp/flextok_tiny
  # with REPA (a DINOv2 weights file is required; jaxtok never downloads it):
  python tools/train.py --config configs/flextok.py:repa=/data/dinov2_vitl14_reg4_pretrain.pth,repa_layer=8 ...

Model fields follow `jaxtok.tokenizers.flextok.make_model` (size presets d12_d12, d18_d18, d18_d28).
"""
from __future__ import annotations

import ml_collections

from jaxtok.configs import common

SIZES = ("d12_d12", "d18_d18", "d18_d28")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, size="d18_d28", tokens=256, res=256, tiny=False, repa="", repa_layer=0,
                       repa_size="L")
  if not a.tiny and a.size not in SIZES:
    raise ValueError(f"size must be one of {SIZES}, got {a.size!r}")
  c = common.base_config()
  c.model = ml_collections.ConfigDict(dict(
      name="flextok", size=a.size, image_size=a.res, num_tokens=a.tokens,
      fsq_levels=(8, 8, 8, 5, 5, 5), nested_dropout_mode="uniform", dtype="bfloat16"))
  c.total_steps = 400_000
  c.data.image_size = a.res
  c.data.batch_size = 256
  c.optim.update(lr=1e-4, warmup_steps=10_000, end_lr=1e-5, b1=0.9, b2=0.99, wd=0.05)
  c.loss.update(l1=0.0, l2=0.0)  # the rectified-flow loss is in train_forward's losses.
  k = a.tokens
  c.eval.token_counts = sorted({1, max(1, k // 16), max(1, k // 4), k})
  if a.tiny:
    common.tiny_training(c)
    # The model's "tiny" preset: pixels patchified directly (no VAE), 8 registers.
    c.model.update(size="tiny", image_size=16, patch_size=4, num_tokens=8, dtype="float32")
    c.eval.token_counts = [1, 8]
    c.ema_decay = 0.9
  # REPA on the decoder (the paper: DINOv2-L; REPA's projector width 2048).
  common.repa_args(c, a.repa, a.repa_layer, a.repa_size, hidden=2048)
  return c
