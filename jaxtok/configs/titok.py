"""TiTok (arXiv 2406.07550): 1D tokenizer, two-stage (proxy codes) or single-stage (pixels) recipe.

  python tools/train.py --config configs/titok.py:size=S,tokens=128 --workdir /tmp/titok
  python tools/train.py --config configs/titok.py:tiny --workdir /tmp/titok_tiny

Arguments: size (S, B, L: encoder and decoder ViT), tokens (K), recipe ("single" = pixel losses
from step 0, the TA-TiTok / BL-SL recipe; "two_stage" = stage 1 of the released recipe, the decoder
predicts the proxy codes of a frozen MaskGIT VQGAN teacher and is trained by cross-entropy),
quantizer (vq, fsq, lfq, bsq, rvq, rfsq, binary: any discrete kind of
`jaxtok.tokenizers.bottleneck`, options in model.quantizer_options; or vae), res (image size), gan (single recipe: add the released stage-2 PatchGAN
term, weight 0.01 with LeCAM 0.001 from step 20k, discriminator lr 1e-4), tiny (a CPU smoke config),
repa / repa_layer / repa_size (GigaTok's semantic regularisation: the path of an official DINOv2
weights file, the decoder block aligned (GigaTok: 3), the DINOv2 size (default B); see
`jaxtok.losses.repa`).
"""
from __future__ import annotations

import ml_collections

from jaxtok.configs import common
from jaxtok.nn.vit import vit_size

SIZES = ("S", "B", "L")
QUANTIZERS = ("vq", "fsq", "lfq", "bsq", "rvq", "rfsq", "binary", "vae")
RECIPES = ("single", "two_stage")


def titok_model(arg: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  if arg.size not in SIZES:
    raise ValueError(f"size must be one of {SIZES}, got {arg.size!r}")
  if arg.recipe not in RECIPES:
    raise ValueError(f"recipe must be one of {RECIPES}, got {arg.recipe!r}")
  if arg.tokens < 1:
    raise ValueError(f"tokens must be >= 1, got {arg.tokens}")
  m = ml_collections.ConfigDict(dict(
      name=name, image_size=arg.res, patch_size=16, encoder_size=arg.size, decoder_size=arg.size,
      num_latent_tokens=arg.tokens, quantizer=arg.quantizer, token_size=12, codebook_size=4096,
      use_l2_norm=True, commitment_cost=0.25, legacy_reshape=False,
      decoder_head="proxy_codes" if arg.recipe == "two_stage" else "pixels", dtype="bfloat16",
      remat=False))
  if arg.quantizer not in QUANTIZERS:
    raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {arg.quantizer!r}")
  if arg.quantizer in ("fsq", "rfsq"):
    # 64000 codes per level; rfsq (symmetric grids) adds a second residual level.
    m.token_size, m.fsq_levels = 6, (8, 8, 8, 5, 5, 5)
  if arg.quantizer in ("lfq", "bsq", "binary"):
    # 12 bits per token: the 4096 ids of the VQ default, one int32 per token.
    m.use_l2_norm = False
  if arg.quantizer in ("rvq", "rfsq"):
    m.quantizer_options = dict(num_quantizers=2)
  if arg.quantizer == "vae":
    m.token_size, m.kl_weight = 16, 1e-6
  return m


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, size="S", tokens=128, recipe="single", quantizer="vq", res=256,
                       gan=False, tiny=False, repa="", repa_layer=0, repa_size="B")
  if a.gan and a.recipe != "single":
    raise ValueError("gan applies to the single-stage recipe (pixel outputs), not recipe=two_stage")
  c = common.base_config()
  c.model = titok_model(a, "titok")
  c.total_steps = 650_000 if a.recipe == "single" else 1_000_000
  c.data.image_size = a.res
  c.data.batch_size = 256
  c.optim.update(lr=1e-4, warmup_steps=10_000, end_lr=1e-5, b1=0.9, b2=0.99, wd=1e-4, clip=1.0)
  c.ema_decay = 0.999
  if a.recipe == "single":
    # Pixel L2 from step 0 (the perceptual term needs a feature-network weights file:
    # set config.loss.perceptual and config.perceptual_weights to enable it).
    c.loss.update(l2=1.0)
    if a.gan:
      # bytedance/1d-tokenizer configs/training/TiTok/stage2: discriminator_weight 0.01,
      # discriminator_start 20k, lecam_regularization_weight 0.001, discriminator lr 1e-4.
      common.add_gan(c, weight=0.01, start=20_000, lecam=0.001, disc_lr=1e-4)
  else:
    # Stage 1: CE against the teacher's codes + the quantizer loss (from train_forward).
    c.loss.update(l2=0.0, proxy=1.0)
    c.teacher = ml_collections.ConfigDict(dict(
        model=dict(name="vqgan", image_size=a.res, codebook_size=1024), checkpoint="",
        random_init_for_smoke_test=False))
  c.eval.token_counts = [a.tokens]
  if a.tiny:
    common.tiny_training(c)
    c.model.update(image_size=16, patch_size=4, encoder_width=32, encoder_depth=1, encoder_heads=2,
                   decoder_width=32, decoder_depth=1, decoder_heads=2, num_latent_tokens=8,
                   codebook_size=64, dtype="float32")
    c.model.encoder_size = None
    c.model.decoder_size = None
    c.eval.token_counts = [2, 8]
    c.ema_decay = 0.9
    if a.recipe == "two_stage":
      # Proxy head over a 4x4 grid of a tiny random VQGAN teacher (plumbing only, see loop._teacher).
      c.model.update(proxy_codebook_size=32, pixel_ch=8, pixel_ch_mult=(1, 1, 2),
                     pixel_num_res_blocks=1, pixel_z_channels=8, pixel_num_groups=4)
      c.teacher.model = ml_collections.ConfigDict(dict(
          name="vqgan", image_size=16, ch=8, ch_mult=(1, 1, 2), num_res_blocks=1, z_channels=8,
          codebook_size=32, num_groups=4))
      c.teacher.random_init_for_smoke_test = True
  # GigaTok's semantic regularisation: DINOv2-B, projector width 4 x decoder width.
  width = c.model.get("decoder_width") or vit_size(c.model.decoder_size)[0]
  common.repa_args(c, a.repa, a.repa_layer, a.repa_size, hidden=4 * int(width))
  return c
