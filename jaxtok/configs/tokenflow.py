"""TokenFlow (dual codebook, shared mapping; `jaxtok.tokenizers.tokenflow`).

  python tools/train.py --config configs/tokenflow.py:tiny --workdir /tmp/tokenflow_tiny
  python tools/train.py --config configs/tokenflow.py --workdir /tmp/tokenflow

Arguments: codebook (K, 16384 in the release), scales ("release": multi-scale residual quantization
over the release's scales for a 16 x 16 grid, 1, 2, 4, ..., 14, 16 (its 256 px teacher's), with the
random drop of one scale 10% of the time; "single": the 16 x 16 grid quantized once), tiny.
The release pairs SigLIP-so400m (384 px, a 27 x 27 grid) with a pixel encoder fed a 432 px resize; this
config pairs SigLIP-B/16 at 256 px with the f16 VQGAN encoder, so both grids are 16 x 16 without a
resize. The tower is random until its weights are loaded with `tokenizers.tokenflow.with_siglip`
(nothing is downloaded). tiny: a random 2-block SigLIP (width 32, patch 4) at 16 px with a 4x conv
encoder, a 4 x 4 grid (scales 1, 2, 4: 21 tokens; 16 with scales=single), 64 codes: the mechanics,
not the semantics.
"""
from __future__ import annotations

import ml_collections

from jaxtok.configs import common

# SigLIP-B/16 at 256 px (16 x 16 patches) and the tiny random 2-block tower; shared with DualToken.
SIGLIP_B16_256 = dict(width=768, depth=12, num_heads=12, mlp_hidden=3072, patch_size=16, image_size=256)
SIGLIP_TINY = dict(width=32, depth=2, num_heads=2, mlp_hidden=64, patch_size=4, image_size=16)


def semantic_recipe(c: ml_collections.ConfigDict) -> None:
  """The training recipe of the SigLIP-based tokenizers (TokenFlow, DualToken) at 256 px."""
  c.total_steps = 500_000
  c.data.image_size = 256
  c.data.batch_size = 256
  c.optim.update(lr=1e-4, warmup_steps=5_000, end_lr=1e-5, b1=0.9, b2=0.95, wd=0.05)
  c.loss.update(l1=0.0, l2=1.0)


def tiny_codebook(codebook: int) -> int:
  """The tiny variants' codebook: 64 unless an explicit size was asked for."""
  return 64 if codebook == 16384 else codebook


# The release's scale lists (ByteFlow-AI/TokenFlow vq_model.py `scale_rq_layers`): a 16 x 16 grid
# (its vitamin_xlarge_256 teacher) and the 27 x 27 grid of SigLIP-so400m-384.
SCALES_16 = (1, 2, 4, 6, 8, 10, 12, 14, 16)
SCALES_27 = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 17, 22, 27)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, codebook=16384, scales="release", tiny=False)
  if a.scales not in ("release", "single"):
    raise ValueError(f"scales must be 'release' or 'single', got {a.scales!r}")
  c = common.base_config()
  c.model = ml_collections.ConfigDict(dict(
      name="tokenflow", image_size=256,
      siglip=dict(SIGLIP_B16_256), siglip_layer=-2, codebook_size=a.codebook, semantic_dim=32, pixel_dim=8, ch=128,
      ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=256, num_groups=32, decoder_width=768,
      decoder_depth=3, decoder_heads=12, semantic_weight=1.0, pixel_weight=1.0,
      commitment_cost=0.25, semantic_loss_weight=1.0, scales=SCALES_16, scale_drop=0.1,
      dtype="bfloat16"))
  semantic_recipe(c)
  if a.tiny:
    common.tiny_training(c)
    c.model.update(
        image_size=16,
        siglip=dict(SIGLIP_TINY), siglip_layer=-2, codebook_size=tiny_codebook(a.codebook), semantic_dim=8,
        pixel_dim=4, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=8, num_groups=4,
        decoder_width=32, decoder_depth=1, decoder_heads=2, scales=(1, 2, 4), dtype="float32")
    c.ema_decay = 0.9
  if a.scales == "single":
    c.model.scales = None
  return c
