"""Layton (Latent Consistency Tokenizer): 1D VQ tokens decoded by a latent consistency decoder into
a frozen VAE's latent space, trained with the consistency-training loss (in train_forward's losses)
plus pixel losses on the 1-step reconstruction.

  python tools/train.py --config configs/layton.py --workdir /tmp/layton       # 1024px, 256 tokens
  python tools/train.py --config configs/layton.py:tiny --workdir /tmp/layton_tiny
  python tools/convert.py --model ldm_vae --weights /path/to/sd-vae-ft-mse --out /tmp/sd_vae
  python tools/train.py --config configs/layton.py:sd_vae,vae_checkpoint=/tmp/sd_vae --workdir /tmp/l

Model fields follow `jaxtok.tokenizers.layton.Layton`. The full config's VAE has Stable Diffusion's
shape (f8, 4 channels, scaling 0.18215) and is frozen (stop_gradient in the model, no weight decay);
`sd_vae,vae_checkpoint=DIR` sets the VAE fields to a released SD VAE's exactly
(`convert.ldm_vae.RELEASED`, `vae=sd-vae-ft-mse` by default, or `vae=sdxl-vae`: scaling 0.13025)
and builds the model with the converted weights of DIR (tools/convert.py --model ldm_vae; jaxtok
downloads nothing); any size that differs from DIR's is refused when the model is built.
`vae_checkpoint=DIR` alone keeps the config's VAE fields (they must equal DIR's). The
encoder/decoder widths, the codebook size (16384) and the token size (16) of the full config are our
assumptions, not numbers from the paper. `steps=N` sets the consistency steps of training and
decoding (1-4).
"""
from __future__ import annotations

import ml_collections

from jaxtok.configs import common
from jaxtok.convert import ldm_vae
from jaxtok.train import optim


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, tokens=256, res=1024, steps=1, tiny=False, sd_vae=False,
                       vae="sd-vae-ft-mse", vae_checkpoint="")
  c = common.base_config()
  c.model = ml_collections.ConfigDict(dict(
      name="layton", image_size=a.res, patch_size=32, enc_width=1024, enc_depth=24, enc_heads=16,
      num_latent_tokens=a.tokens, token_size=16, codebook_size=16384, quantizer="vq",
      use_vae=True, vae_channels=(128, 256, 512, 512), vae_latent_channels=4,
      vae_scaling_factor=0.18215, latent_patch_size=4, dec_width=1024, dec_depth=24, dec_heads=16,
      prediction="epsilon", target_decay=0.95, train_steps=a.steps, decode_steps=a.steps,
      dtype="bfloat16"))
  # The VAE gets zero gradients (stop_gradient in the model); no weight decay keeps it unchanged.
  c.optim.no_decay_patterns = optim.NO_DECAY_PATTERNS + (r"^vae/",)
  common.l1_schedule(c, total_steps=200_000, image_size=a.res, tokens=a.tokens, tiny=a.tiny)
  if a.tiny:
    c.model.update(image_size=16, patch_size=4, enc_width=32, enc_depth=1, enc_heads=2,
                   num_latent_tokens=8, token_size=8, codebook_size=64, vae_channels=(8, 8),
                   vae_latent_channels=4, vae_layers_per_block=1, vae_norm_groups=4,
                   vae_mid_attention=False, vae_scaling_factor=1.0, latent_patch_size=2,
                   dec_width=32, dec_depth=1, dec_heads=2, dtype="float32")
    c.eval.token_counts = [8]
    c.ema_decay = 0.9
  if a.sd_vae:
    released = ldm_vae.RELEASED.get(f"stabilityai/{a.vae}")
    if released is None:
      raise ValueError(f"vae must be one of {[n.split('/')[1] for n in ldm_vae.RELEASED]}, got "
                       f"{a.vae!r}")
    if not a.vae_checkpoint:
      raise ValueError("sd_vae needs vae_checkpoint=DIR (the output of tools/convert.py --model "
                       "ldm_vae on the released weights)")
    c.model.update({f"vae_{k}": v for k, v in released.items()})
    c.model.use_vae = True
  if a.vae_checkpoint:
    c.model.vae_checkpoint = a.vae_checkpoint
    # The pretrained VAE never changes (stop-gradient): no AdamW moments for its weights (two
    # float32 copies of 83.7M parameters with sd-vae-ft-mse).
    c.optim.frozen_patterns = (r"^vae/",)
  return c
