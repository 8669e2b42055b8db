"""TA-TiTok (arXiv 2501.07730): text-aware TiTok, VQ or VAE (KL) tokens, single-stage pixel recipe.

  configs/tatitok.py:enc=B,tokens=32,quantizer=vq      the released tatitok_bl32_vq recipe
  configs/tatitok.py:tiny                              a CPU smoke config (tiny random CLIP too)

Arguments: enc (encoder ViT size S/B/L; the decoder is L as in every release), tokens (K),
quantizer (vq: 8192 codes of 64 dims, no l2 normalisation; vae: 16 dims, KL weight 1e-6), res,
clip / bpe (the user's CLIP ViT-L/14-336 text-tower weights and BPE merges file: the captions'
features come from them), tiny.

Recipe (bytedance/1d-tokenizer configs/training/TA-TiTok/*.yaml): AdamW lr 1e-4 (b1 0.9, b2 0.999,
wd 1e-4), 10k warmup, cosine to 1e-5, 650k steps at batch 32 per GPU, grad clip 1.0, EMA, L2 1.0,
PatchGAN weight 0.1 + LeCAM 0.001 from step 200k, discriminator lr 1e-4. The release's 1.1 x
"lpips-convnext_s-1.0-0.1" perceptual term is `loss.perceptual_net` here; it needs the user's LPIPS
and ConvNeXt-S weights, so loss.perceptual stays 0 unless set (`--config.loss.perceptual=1.1
--config.loss.perceptual_weights=vgg.pth --config.loss.convnext_weights=convnext_small.pth`). Not
reproduced: the official `clustering_vq` codebook restarts of the VQ runs.

Training data: captioned images; here the bundled photographs with one caption each
(`data.photo_captions`), each caption's CLIP "tokens" features computed once by the frozen text
encoder (`text.encoder.TextEncoder`, or a tiny random one with `text.random_init_for_smoke_test`) and
given to train_forward through the batch ("text_features"; `train.step`). tools/train.py trains it
(`train.loop` reads `data.photo_captions` for a text-aware config, and scores the held-out crops
with their captions); tools/pretokenize.py writes its tokens with the captions and their CLIP
features for MaskGen (configs/maskgen.py). tools/evaluate.py and tools/tokenize_images.py refuse it
(their images carry no captions).

  python tools/train.py --config configs/tatitok.py:tiny --workdir runs/tatitok
"""
from __future__ import annotations

import ml_collections

from jaxtok.configs import common

QUANTIZERS = ("vq", "vae")
TINY_CLIP = dict(width=16, depth=1, num_heads=2, vocab_size=49408, context_length=8, embed_dim=16,
                 activation="quick_gelu")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, enc="B", tokens=32, quantizer="vq", res=256, clip="", bpe="", tiny=False)
  if a.quantizer not in QUANTIZERS:
    raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {a.quantizer!r}")
  if a.enc not in ("S", "B", "L"):
    raise ValueError(f"enc must be one of S, B, L, got {a.enc!r}")
  if a.tokens < 1:
    raise ValueError(f"tokens must be >= 1, got {a.tokens}")
  c = common.base_config()
  c.model = ml_collections.ConfigDict(dict(
      name="tatitok", image_size=a.res, patch_size=16, encoder_size=a.enc, decoder_size="L",
      num_latent_tokens=a.tokens, quantizer=a.quantizer, legacy_reshape=False,
      decoder_head="pixels", text_context_length=77, text_embed_dim=768, dtype="bfloat16"))
  if a.quantizer == "vq":
    c.model.update(token_size=64, codebook_size=8192, use_l2_norm=False, commitment_cost=0.25)
  else:
    c.model.update(token_size=16, kl_weight=1e-6)
  c.text = ml_collections.ConfigDict(dict(clip_weights=a.clip, bpe=a.bpe, clip=None,
                                          random_init_for_smoke_test=False))
  c.total_steps = 650_000
  c.data.image_size = a.res
  c.data.batch_size = 256
  c.optim.update(lr=1e-4, warmup_steps=10_000, end_lr=1e-5, b1=0.9, b2=0.999, wd=1e-4, clip=1.0)
  c.ema_decay = 0.999
  c.loss.update(l2=1.0, perceptual_net="lpips-convnext_s-1.0-0.1")
  common.add_gan(c, weight=0.1, start=200_000, lecam=0.001, disc_lr=1e-4)
  c.eval.token_counts = [a.tokens]
  if a.tiny:
    common.tiny_training(c, steps=20)
    c.optim.update(lr=3e-3, warmup_steps=1, end_lr=3e-3)
    c.loss.update(gan=0.0, gan_start=0, disc_start=0, lecam=0.0)
    c.disc = c.disc_optim = None
    c.model.update(image_size=16, patch_size=4, encoder_width=32, encoder_depth=1, encoder_heads=2,
                   decoder_width=32, decoder_depth=1, decoder_heads=2, num_latent_tokens=8,
                   text_context_length=TINY_CLIP["context_length"],
                   text_embed_dim=TINY_CLIP["width"], dtype="float32")
    if a.quantizer == "vq":
      c.model.update(token_size=8, codebook_size=64)
    else:
      c.model.token_size = 4
    c.model.encoder_size = None
    c.model.decoder_size = None
    c.eval.token_counts = [8]
    c.ema_decay = 0.0
    c.text.clip = ml_collections.ConfigDict(TINY_CLIP)
    c.text.random_init_for_smoke_test = not (a.clip and a.bpe)
  return c
