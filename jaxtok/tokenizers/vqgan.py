"""MaskGIT VQGAN (f16, 1024 codes, no attention): a 2D tokenizer and TiTok's two-stage pixel decoder.

Encoder/decoder are `jaxtok.nn.conv` (ch 128, mult (1, 1, 2, 2, 4), 2 residual blocks per level,
GroupNorm(32, eps 1e-6), SiLU, nearest upsampling + conv, nin_shortcut on the block output). The
bottleneck is a plain (Euclidean) VQ over a learned codebook [P, Z] with commitment 0.25 and the
codebook loss (gradient-trained). Images are used in [0, 1] directly, as in the released model.
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
from jaxtok.quantizers import perturb as perturb_lib
from jaxtok.quantizers import vq
from jaxtok.sharding import logical_init
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
               commitment_cost: float = 0.25, dtype: Any = jnp.float32, remat: Any = "none",
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
    self.image_size, self.grid, self.codebook_size = image_size, image_size // f, codebook_size
    self.num_latent_tokens = self.grid**2
    self.commitment_cost = float(commitment_cost)
    self.encoder = conv_lib.Encoder(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                                    z_channels=z_channels, num_groups=num_groups, dtype=dtype,
                                    rngs=rngs)
    self.decoder = conv_lib.Decoder(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                                    z_channels=z_channels, num_groups=num_groups, dtype=dtype,
                                    rngs=rngs)
    bound = 1.0 / codebook_size
    self.codebook = nnx.Param(logical_init(
        lambda key, shape, dt=jnp.float32: jax.random.uniform(key, shape, dt, -bound, bound),
        "codebook", None)(rngs.params(), (codebook_size, z_channels), jnp.float32))

  def _state(self) -> vq.VQState:
    cb = self.codebook.get_value()
    return vq.VQState(cb, jnp.zeros(cb.shape[:1], jnp.float32), jnp.zeros_like(cb),
                      jnp.asarray(True))

  def encode(self, images: jax.Array, *, num_tokens: int | None = None,
             rng: jax.Array | None = None, train: bool = False) -> EncodeOutput:
    """images float [B, H, W, 3] in [0, 1] -> tokens int32 [B, h*w], codes [B, h*w, Z].

    num_tokens: only the full grid is meaningful for a 2D tokenizer; it must be None or h*w.
    """
    del rng, train
    check_images(images, self.image_size)
    self._check_full_grid(num_tokens)
    _, out = self._quantize(images)
    return EncodeOutput(out.indices, out.codes, dict(out.losses), dict(out.metrics))

  def _check_full_grid(self, num_tokens):
    num_tokens = check_num_tokens(num_tokens, self.num_latent_tokens)
    if num_tokens not in (None, self.num_latent_tokens):
      raise ValueError(f"num_tokens must be None or {self.num_latent_tokens} for the 2D VQGAN, got "
                       f"{num_tokens}")

  def _quantize(self, images):
    """(z [B, h*w, Z] float32 encoder output, vq.quantize's output)."""
    z = remat_call(self.encoder, images, remat=self.remat).astype(jnp.float32)
    z = z.reshape(z.shape[0], self.num_latent_tokens, -1)
    return z, vq.quantize(z, self._state(), beta=self.commitment_cost, codebook_weight=1.0)

  def decode_codes(self, codes: jax.Array) -> jax.Array:
    """Codes [B, h*w, Z] -> images [B, H, W, 3] float32."""
    b = codes.shape[0]
    z = codes.reshape(b, self.grid, self.grid, -1)
    return remat_call(self.decoder, z, remat=self.remat).astype(jnp.float32)

  def decode(self, tokens: jax.Array, *, rng: jax.Array | None = None,
             train: bool = False) -> jax.Array:
    """Tokens int32 [B, h*w] -> images [B, H, W, 3] float32."""
    del rng, train
    if not hasattr(tokens, "shape") or tokens.ndim != 2 or tokens.shape[1] != self.num_latent_tokens:
      raise ValueError(f"tokens must have shape [B, {self.num_latent_tokens}], got "
                       f"{getattr(tokens, 'shape', type(tokens).__name__)}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise TypeError(f"tokens must be integer, got {tokens.dtype}")
    return self.decode_codes(vq.indices_to_codes(tokens, self._state()))

  def codes_to_pixels(self, soft_codes: jax.Array) -> jax.Array:
    """Probabilities over the codes [B, h, w, P] -> images [B, H, W, 3] float32."""
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
    z, out = self._quantize(images)
    codes, metrics = out.codes, dict(out.metrics)
    if perturb is not None:
      codes, info = perturb_lib.apply(perturb, step, rng, z, codes, out.indices,
                                      codebook=self.codebook.get_value())
      metrics.update(info)
    return TrainOutput(self.decode_codes(codes), dict(out.losses), metrics)


_FIELDS = ("image_size", "ch", "ch_mult", "num_res_blocks", "z_channels", "codebook_size",
           "num_groups", "commitment_cost")


def make_model(cfg: Mapping[str, Any], *, rngs: nnx.Rngs) -> VQGAN:
  """A VQGAN from _FIELDS and the common options (dtype, remat; scan_layers and attention_impl
  are refused: no transformer); an unknown key raises ValueError listing the valid ones."""
  kwargs = model_kwargs(as_dict(cfg), _FIELDS, model="VQGAN", cls=VQGAN)
  if "ch_mult" in kwargs:
    kwargs["ch_mult"] = tuple(int(v) for v in kwargs["ch_mult"])
  return VQGAN(**kwargs, rngs=rngs)
