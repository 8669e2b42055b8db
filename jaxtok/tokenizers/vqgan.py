"""MaskGIT VQGAN (f16, 1024 codes, no attention): a 2D tokenizer and TiTok's two-stage pixel decoder.

Encoder/decoder are `jaxtok.nn.conv` (ch 128, mult (1, 1, 2, 2, 4), 2 residual blocks per level,
GroupNorm(32, eps 1e-6), SiLU, nearest upsampling + conv, nin_shortcut on the block output). The
bottleneck is by default a plain (Euclidean) VQ over a learned codebook [P, Z] (the `codebook`
parameter) with commitment 0.25 and the codebook loss (gradient-trained); `quantizer` picks any kind
of `bottleneck.py` (vq | fsq | lfq | bsq | rvq | rfsq | binary) over the Z channels, with
`quantizer_options`, `use_l2_norm` (cosine vq/rvq) and `fsq_levels`. Tokens are int32 [B, h*w]
(rvq/rfsq [B, h*w, Q]; binary with Z > 31 [B, h*w, Z] bits); `codebook_size` is then the number of
ids per entry. Images are used in [0, 1] directly, as in the released model.
`codes_to_pixels` decodes soft codes (probabilities over the P codes, i.e. the convex combination
of code vectors) and is how TiTok's legacy "proxy_codes" head reaches pixels.

Note: the open-muse/TiTok port of the VQGAN quantizer weights its two loss terms the other way round
(1 on the commitment term, 0.25 on the codebook term); it only matters for training the VQGAN itself,
and this module uses the VQ-VAE convention (`commitment_cost` on the commitment term).

Dimension names: B batch, H/W image size, f = 2**(len(ch_mult)-1) downsampling, h = H/f, w = W/f,
Z latent channels, P codebook size.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.nn import conv as conv_lib
from jaxtok.nn.options import model_kwargs
from jaxtok.nn.stack import check_remat, remat_call
from jaxtok.tokenizers import bottleneck as bottleneck_lib
from jaxtok.tokenizers.api import (EncodeOutput, TrainOutput, as_dict, check_images,
                                   check_num_tokens, check_target, compute_dtype)


def codes_to_pixels(decoder: conv_lib.Decoder, codebook: jax.Array, probs: jax.Array) -> jax.Array:
  """Soft codes -> pixels: decoder(probs @ codebook).

  Args:
    decoder: the VQGAN conv decoder.
    codebook: [P, Z] float32.
    probs: [B, h, w, P] weights over the codes (softmax of logits, or one-hot).

  Returns:
    [B, h*f, w*f, 3] float32.
  """
  z = jnp.einsum("bhwp,pz->bhwz", probs.astype(jnp.float32), codebook.astype(jnp.float32))
  return decoder(z).astype(jnp.float32)


class VQGAN(nnx.Module):
  """VQGAN tokenizer: images [B, H, W, 3] -> tokens int32 [B, h*w] (row-major) -> images."""

  def __init__(self, *, image_size: int = 256, ch: int = 128,
               ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2,
               z_channels: int = 256, codebook_size: int = 1024, num_groups: int = 32,
               commitment_cost: float = 0.25, quantizer: str = "vq",
               quantizer_options: dict | None = None, use_l2_norm: bool = False,
               fsq_levels: Sequence[int] = (), dtype: Any = jnp.float32, remat: Any = "none",
               scan_layers: bool = False, attention_impl: str | None = None, rngs: nnx.Rngs):
    if scan_layers or attention_impl is not None:
      raise ValueError(f"the VQGAN is convolutional (no transformer layers): scan_layers and "
                       f"attention_impl do not apply, got scan_layers={scan_layers!r}, "
                       f"attention_impl={attention_impl!r}")
    self.remat = check_remat(remat)  # the encoder and the decoder are each rematerialised whole
    f = 2**(len(ch_mult) - 1)
    if image_size % f:
      raise ValueError(f"image_size ({image_size}) must be divisible by the downsampling factor "
                       f"2**(len(ch_mult)-1) = {f}")
    dtype = compute_dtype(dtype)
    self.bottleneck = bottleneck_lib.Bottleneck.create(
        quantizer, z_channels, codebook_size=codebook_size, levels=fsq_levels, cosine=use_l2_norm,
        commitment_cost=commitment_cost, options=quantizer_options)
    self.quantizer = quantizer
    self.image_size, self.grid = image_size, image_size // f
    self.codebook_size = self.bottleneck.codebook_size
    self.num_latent_tokens = self.grid**2
    self.commitment_cost = float(commitment_cost)
    self.encoder = conv_lib.Encoder(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                                    z_channels=z_channels, num_groups=num_groups, dtype=dtype,
                                    rngs=rngs)
    self.decoder = conv_lib.Decoder(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                                    z_channels=z_channels, num_groups=num_groups, dtype=dtype,
                                    rngs=rngs)
    # `codebook` (vq, rvq; uniform(-1/P, 1/P)) and EMA statistics sit on the model itself: the
    # released checkpoint's parameter name.
    for name, var in self.bottleneck.make_variables(rngs).items():
      setattr(self, name, var)

  def encode(self, images: jax.Array, *, num_tokens: int | None = None,
             rng: jax.Array | None = None, train: bool = False) -> EncodeOutput:
    """images float [B, H, W, 3] in [0, 1] -> tokens int32 [B, h*w, *token_shape], codes [B, h*w, Z].

    num_tokens: only the full grid is meaningful for a 2D tokenizer; it must be None or h*w.
    """
    check_images(images, self.image_size)
    self._check_full_grid(num_tokens)
    _, out = self._quantize(images, rng, train)
    return EncodeOutput(*out)

  def _check_full_grid(self, num_tokens):
    num_tokens = check_num_tokens(num_tokens, self.num_latent_tokens)
    if num_tokens not in (None, self.num_latent_tokens):
      raise ValueError(f"num_tokens must be None or {self.num_latent_tokens} for the 2D VQGAN, got "
                       f"{num_tokens}")

  def _quantize(self, images, rng, train, update=False):
    """(z [B, h*w, Z] float32 encoder output, (indices, codes, losses, metrics)); with `update`
    (train_forward) the VQ state updates are written to the model's variables."""
    z = remat_call(self.encoder, images, remat=self.remat).astype(jnp.float32)
    z = z.reshape(z.shape[0], self.num_latent_tokens, -1)
    values = bottleneck_lib.read(self, self.bottleneck)
    if not update:
      return z, self.bottleneck.quantize(values, z, rng=rng, train=train)
    *out, new_values = self.bottleneck.train_quantize(values, z, rng)
    bottleneck_lib.write(self, new_values)
    return z, tuple(out)

  def decode_codes(self, codes: jax.Array) -> jax.Array:
    """Codes [B, h*w, Z] -> images [B, H, W, 3] float32."""
    b = codes.shape[0]
    z = codes.reshape(b, self.grid, self.grid, -1)
    return remat_call(self.decoder, z, remat=self.remat).astype(jnp.float32)

  def decode(self, tokens: jax.Array, *, rng: jax.Array | None = None,
             train: bool = False) -> jax.Array:
    """Tokens int32 [B, h*w, *token_shape] -> images [B, H, W, 3] float32 (ids outside
    [0, codebook_size) raise ValueError when concrete)."""
    del rng, train
    self.bottleneck.check_tokens(tokens, self.num_latent_tokens)
    if tokens.shape[1] != self.num_latent_tokens:
      raise ValueError(f"tokens must have shape [B, {self.num_latent_tokens}, ...] (the full grid), "
                       f"got {tuple(tokens.shape)}")
    values = bottleneck_lib.read(self, self.bottleneck)
    return self.decode_codes(self.bottleneck.indices_to_codes(values, tokens))

  def codes_to_pixels(self, soft_codes: jax.Array) -> jax.Array:
    """Probabilities over the codes [B, h, w, P] -> images [B, H, W, 3] float32 (quantizer vq)."""
    if self.quantizer != "vq":
      raise ValueError(f"codes_to_pixels needs a codebook (quantizer 'vq'), got {self.quantizer!r}")
    return codes_to_pixels(self.decoder, self.codebook.get_value(), soft_codes)

  def train_forward(self, images: jax.Array, *, rng: jax.Array, step: int | jax.Array | None = None,
                    target: str = "pixels", perturb: dict | None = None,
                    num_tokens: int | None = None) -> TrainOutput:
    """Training pass (the contract of `api.TrainOutput`): recon [B, H, W, 3] float32.

    target must be "pixels" (no proxy head); `perturb` (RobusTok settings, annealed on `step`)
    replaces tokens of the first floor(B * beta) images by one of their delta nearest codes
    (Euclidean, as the quantizer) after the quantizer's losses. The 2D grid has no kept length:
    num_tokens must be None or h*w.
    """
    check_target(target, proxy_head=False, model="VQGAN")
    self._check_full_grid(num_tokens)
    check_images(images, self.image_size)
    # The quantizer draws from its own stream; the perturbation keeps `rng` as before.
    z, (indices, codes, losses, metrics) = self._quantize(images, jax.random.fold_in(rng, 2), True,
                                                          update=True)
    metrics = dict(metrics)
    if perturb is not None:
      codes, info = self.bottleneck.perturb(bottleneck_lib.read(self, self.bottleneck), perturb,
                                            step, rng, z, codes, indices)
      metrics.update(info)
    return TrainOutput(self.decode_codes(codes), dict(losses), metrics)


_FIELDS = ("image_size", "ch", "ch_mult", "num_res_blocks", "z_channels", "codebook_size",
           "num_groups", "commitment_cost", "quantizer", "quantizer_options", "use_l2_norm",
           "fsq_levels")


def make_model(cfg: Mapping[str, Any], *, rngs: nnx.Rngs) -> VQGAN:
  """A VQGAN from _FIELDS and the common options (dtype, remat; scan_layers and attention_impl
  are refused: no transformer); an unknown key raises ValueError listing the valid ones."""
  kwargs = model_kwargs(as_dict(cfg), _FIELDS, model="VQGAN", cls=VQGAN)
  for key in ("ch_mult", "fsq_levels"):
    if key in kwargs:
      kwargs[key] = tuple(int(v) for v in kwargs[key])
  return VQGAN(**kwargs, rngs=rngs)
