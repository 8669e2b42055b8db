"""TiTok (arXiv 2406.07550): 1D tokenizer, two-stage (proxy codes) or single-stage (pixels) recipe.

  python tools/train.py --config configs/titok.py:size=S,tokens=128 --workdir /tmp/titok
  python tools/train.py --config configs/titok.py:tiny --workdir /tmp/titok_tiny

Arguments: size (S, B, L: encoder and decoder ViT), tokens (K), recipe ("single" = pixel losses
from step 0, the TA-TiTok / BL-SL recipe; "two_stage" = stage 1 of the released recipe, the decoder
predicts the proxy codes of a frozen MaskGIT VQGAN teacher and is trained by cross-entropy),
quantizer (vq, fsq, lfq, bsq, rvq, rfsq, binary: any discrete kind of
`jaxtok.tokenizers.bottleneck`, options in model.quantizer_options; or vae), res (image size), gan (single recipe: add the released stage-2 PatchGAN
term, weight 0.01 with LeCAM 0.001 from step 20k, discriminator lr 1e-4), tiny (a CPU smoke config),
stage ("1" the default; "2" = stage 2 of the released two-stage recipe, needs recipe=two_stage;
"posttrain" = RobusTok decoder post-training of any discrete TiTok, see `posttrain`; with
post=generated the paper's own variant on tokens sampled by a trained generator, see
`posttrain_generated`).

Two-stage training (the released TiTok-S/B/L recipe):

  python tools/train.py --config configs/titok.py:recipe=two_stage --workdir /tmp/s1 \
      --config.teacher.checkpoint=/path/maskgit_vqgan
  python tools/train.py --config configs/titok.py:recipe=two_stage,stage=2 --workdir /tmp/s2 \
      --config.init_from.path=/tmp/s1 --config.init_from.pixel_decoder=/path/maskgit_vqgan

Stage 2 and post-training start from another run's weights (`config.init_from`, read by
`jaxtok.train.warm_start` through `checkpoint.load_params`: read-only, strict about keys and shapes)
and freeze the encoder, the latent tokens and the quantizer's codebook (`optim.frozen_patterns`);
resuming the stage-2 run itself continues from its own checkpoints and ignores init_from.

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
STAGES = ("1", "2", "posttrain")
POST_VARIANTS = ("perturb", "generated")
# bytedance/1d-tokenizer modeling/titok.py (finetune_decoder=True): latent_tokens, encoder and
# quantize get requires_grad_(False); decoder, pixel_quantize (our pixel_codebook, created after the
# freeze) and pixel_decoder train. Path regular expressions over the model's parameter names; the
# codebook pattern only for the quantizers that learn one (an FSQ/LFQ grid has no parameters).
FROZEN_ENCODER = (r"^encoder/", r"^latent_tokens$")
FROZEN_CODEBOOK = r"^codebook"


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
                       gan=False, tiny=False, stage="1", repa="", repa_layer=0,
                       repa_size="B", post="perturb")
  if a.stage not in STAGES:
    raise ValueError(f"stage must be one of {STAGES}, got {a.stage!r}")
  if a.stage == "2" and a.recipe != "two_stage":
    raise ValueError(f"stage=2 is the second stage of recipe=two_stage, got recipe={a.recipe!r}")
  if a.gan and a.recipe != "single":
    raise ValueError("gan applies to the single-stage recipe (pixel outputs), not recipe=two_stage "
                     "(its stage 2 has the GAN term already)")
  if a.post not in POST_VARIANTS:
    raise ValueError(f"post must be one of {POST_VARIANTS}, got {a.post!r}")
  if a.post != "perturb" and a.stage != "posttrain":
    raise ValueError(f"post={a.post} selects the post-training variant: it needs stage=posttrain, "
                     f"got stage={a.stage!r}")
  if a.stage == "posttrain" and a.quantizer not in ("vq", "fsq"):
    raise ValueError(f"stage=posttrain perturbs discrete tokens: quantizer must be 'vq' or 'fsq', "
                     f"got {a.quantizer!r}")
  c = common.base_config()
  c.model = titok_model(a, "titok")
  c.total_steps = 650_000 if a.recipe == "single" else 1_000_000
  c.data.image_size = a.res
  c.data.batch_size = 256
  c.optim.update(lr=1e-4, warmup_steps=10_000, end_lr=1e-5, b1=0.9, b2=0.99, wd=1e-4, clip=1.0)
  c.ema_decay = 0.999
  if a.recipe == "single":
    # Pixel L2 from step 0 (the perceptual term needs a feature-network weights file:
    # set config.loss.perceptual and config.loss.perceptual_weights to enable it).
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
  if a.recipe == "two_stage" and a.stage != "1":
    stage2(c)  # post-training a two-stage TiTok continues its stage-2 losses
  if a.stage == "posttrain":
    posttrain(c, tiny=a.tiny)
    if a.post == "generated":
      posttrain_generated(c)
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


def freeze_encoder(c: ml_collections.ConfigDict) -> None:
  """Warm start from `config.init_from` with the encoder, latent tokens and codebook frozen and the
  quantizer's losses off (they would only reach frozen weights; the release multiplies them by 0)."""
  c.init_from = ml_collections.ConfigDict(dict(path="", step=-1, use_ema=True, pixel_decoder=""))
  learned_codebook = c.model.quantizer in ("vq", "rvq")
  c.optim.frozen_patterns = FROZEN_ENCODER + ((FROZEN_CODEBOOK,) if learned_codebook else ())
  c.loss.quantizer = 0.0


def stage2(c: ml_collections.ConfigDict) -> None:
  """TiTok stage 2, "decoder fine-tuning" (bytedance/1d-tokenizer configs/training/TiTok/stage2/*.yaml,
  losses.py ReconstructionLoss_Stage2), applied to a stage-1 config.

  Frozen: encoder, latent_tokens, codebook; trained: decoder (its proxy-logit head), pixel_codebook
  and pixel_decoder, on pixels. Differences from stage 1: l2 1.0 instead of the proxy CE,
  quantizer_weight 0, commitment_cost 0, AdamW b2 0.999, warmup 5k, 500k steps, PatchGAN weight 0.01
  (fixed, no adaptive weight) with LeCAM 0.001 from step 20k, discriminator lr 1e-4. The release's
  0.1 * ConvNeXt-S perceptual term (`loss.perceptual_net="convnext_s"`, `losses.convnext_perceptual`)
  needs torchvision's ConvNeXt-S weights, which only the user can supply: `loss.perceptual` stays 0
  unless set, e.g. `--config.loss.perceptual=0.1 --config.loss.convnext_weights=convnext_small.pth`
  gives the release's term. `init_from.pixel_decoder` should name the
  MaskGIT-VQGAN weights (the stage-1 teacher) as the release does; left empty, the stage-1
  checkpoint's pixel decoder is kept.
  """
  c.total_steps = 500_000
  c.loss.perceptual_net = "convnext_s"
  c.optim.update(lr=1e-4, warmup_steps=5_000, end_lr=1e-5, b1=0.9, b2=0.999, wd=1e-4, clip=1.0)
  c.model.commitment_cost = 0.0
  c.loss.update(l2=1.0, proxy=0.0)
  freeze_encoder(c)
  common.add_gan(c, weight=0.01, start=20_000, lecam=0.001, disc_lr=1e-4)


def posttrain(c: ml_collections.ConfigDict, *, tiny: bool = False) -> None:
  """RobusTok decoder post-training ("Image Tokenizer Needs Post-Training", arXiv 2509.12474),
  perturbation variant, applied to a trained tokenizer's config (either recipe).

  The release (qiuk2/RobusTok configs/post-train.yaml, post_train_data.py; notes in
  shared/reference/quantizers-and-samplers.md A.7 "Post-training") fine-tunes only the decoder
  (`enc_tuning_method: frozen`) at lr 5e-5 on pairs (generated latents, image), where the latents come
  from the trained generator (RAR) with teacher forcing that keeps each ground-truth token with
  probability sigma = 0.7. Without a trained generator this recipe replaces the generator's tokens by
  RobusTok latent perturbation (A.7 `add_perturbation`) on every step and every image (beta 1):
  each token is redrawn with probability alpha = 1 - sigma = 0.3 from its delta nearest codes
  (delta 100 as the main training's delta0; 8 in the tiny variant's 64-code book), so about
  alpha * (delta - 1) / delta of the tokens change. Encoder, latent tokens and codebook are frozen;
  the decoder (and a proxy head's pixel decoder) trains with the run's pixel losses (l2, and the GAN
  of `gan` or of a two-stage TiTok's stage 2). The learning-rate schedule is not in the notes: constant 5e-5 after a 1k warmup.
  """
  c.loss.update(l2=1.0, proxy=0.0)
  c.loss.perturb = ml_collections.ConfigDict(dict(alpha=0.3, beta=1.0, delta=8 if tiny else 100))
  c.optim.update(lr=5e-5, warmup_steps=1_000, end_lr=5e-5)
  c.total_steps = 100_000
  freeze_encoder(c)


def posttrain_generated(c: ml_collections.ConfigDict) -> None:
  """The paper's own post-training on top of `posttrain`: no latent perturbation (the release's
  beta 0); each batch's tokens are redrawn by a trained causal generator with teacher forcing that
  keeps each ground-truth token with probability sigma = 0.7 (`jaxtok.train.posttrain`). Set the
  generator's workdir: --config.posttrain.generator=runs/rar (a gpt or rar run over this
  tokenizer's tokens, or a converted release). Guidance applies only to a class-conditional
  generator on labelled batches; the release's example uses cfg_scale 16, power-cosine, power 2.75.
  """
  del c.loss["perturb"]
  c.posttrain = ml_collections.ConfigDict(dict(
      generator="", sigma=0.7, temperature=1.0, cfg_scale=1.0, cfg_schedule="constant",
      cfg_power=1.0, use_ema=True))

