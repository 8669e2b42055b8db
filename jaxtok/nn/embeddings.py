"""Embeddings and the initializers of the ViT-style tokenizers.

`LearnedEmbedding` is a table [N, W] (positional embeddings, class token, latent tokens, mask token);
`sincos_1d`/`sincos_2d` are fixed sine-cosine position codes, `timestep_embedding` the sinusoidal
time features of diffusion/flow models. The initializers reproduce PyTorch's
`trunc_normal_(std)` (absolute bounds, not bounds in units of the standard deviation) and the
`width**-0.5 * randn` scaling that TiTok and CLIP use for embedding-like parameters.

Dimension names: N table rows (positions or tokens), W width, H/Wd grid height and width.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok.sharding import logical_init


def trunc_normal(std: float = 0.02, lower: float = -2.0, upper: float = 2.0):
  """PyTorch `trunc_normal_(std=std, a=lower, b=upper)`: normal(0, std) truncated at absolute bounds.

  With std 0.02 the bounds +-2 are 100 standard deviations away, so this is a plain normal in practice;
  it is written out so that the distribution is exactly the reference one.
  """

  def init(key, shape, dtype=jnp.float32):
    return (jax.random.truncated_normal(key, lower / std, upper / std, shape, jnp.float32) *
            std).astype(dtype)

  return init


def scaled_normal(width: int):
  """`width**-0.5 * randn`: the init of class/positional/latent/mask embeddings in TiTok and CLIP."""

  def init(key, shape, dtype=jnp.float32):
    return (jax.random.normal(key, shape, jnp.float32) * width**-0.5).astype(dtype)

  return init


def xavier_uniform_fused(width: int, fused: int = 3):
  """PyTorch xavier_uniform on a fused [fused*W, W] in-projection (nn.MultiheadAttention's init).

  The bound is sqrt(6 / (fan_in + fan_out)) = sqrt(6 / ((1 + fused) * W)) whatever shape the fused
  tensor is stored in.
  """
  bound = float(np.sqrt(6.0 / ((1 + fused) * width)))

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)

  return init


class LearnedEmbedding(nnx.Module):
  """A learned table [N, W] with logical axes (None, 'embed').

  Calling it returns the first `length` rows (all rows by default), in float32.
  """

  def __init__(self, num: int, width: int, *, init=None, rngs: nnx.Rngs):
    init = init if init is not None else scaled_normal(width)
    self.num, self.width = num, width
    self.embedding = nnx.Param(logical_init(init, None, "embed")(rngs.params(), (num, width),
                                                                 jnp.float32))

  def __call__(self, length: int | None = None) -> jax.Array:
    """Rows [length or N, W] float32."""
    table = self.embedding.get_value()
    if length is None:
      return table
    if not 1 <= length <= self.num:
      raise ValueError(f"length must be in [1, {self.num}], got {length}")
    return table[:length]


def sincos_1d(positions: np.ndarray | jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sine-cosine code [..., dim] float32 of positions [...]: [sin(p*w_i), cos(p*w_i)], w_i = T^(-i/(dim/2)).

  Static positions (numpy / Python numbers: fixed tables) are computed in float64 and rounded once
  to float32, as the releases build their tables; jax arrays (possibly traced) in float32.

  Raises:
    ValueError: if dim is odd.
  """
  if dim % 2:
    raise ValueError(f"dim must be even, got {dim}")
  half = dim // 2
  xp, ft = (jnp, jnp.float32) if isinstance(positions, jax.Array) else (np, np.float64)
  omega = 1.0 / max_period**(xp.arange(half, dtype=ft) / half)
  angles = xp.asarray(positions, ft)[..., None] * omega
  return jnp.asarray(xp.concatenate([xp.sin(angles), xp.cos(angles)], axis=-1), jnp.float32)


def sincos_2d(height: int, width: int, dim: int, max_period: float = 10000.0) -> jax.Array:
  """2D sine-cosine positions [height*width, dim] float32 in row-major (y, x) order.

  The first dim/2 channels code the row (y), the last dim/2 the column (x): [sin(y w), cos(y w),
  sin(x w), cos(x w)] with w_k = max_period^(-k/(dim/4)), as MAE's `get_2d_sincos_pos_embed` with
  the (h, w) grid and FlexTok's tables (whose "w" half holds the row index; see flextok.py) are.
  Computed in float64, rounded once to float32.

  Raises:
    ValueError: if dim is not a multiple of 4.
  """
  if dim % 4:
    raise ValueError(f"dim must be a multiple of 4, got {dim}")
  ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  emb_y = sincos_1d(ys.reshape(-1), dim // 2, max_period)
  emb_x = sincos_1d(xs.reshape(-1), dim // 2, max_period)
  return jnp.concatenate([emb_y, emb_x], axis=-1)


def timestep_embedding(t: jax.Array, dim: int, *, max_period: float = 10000.0,
                       scale: float = 1000.0) -> jax.Array:
  """Sinusoidal time features float32 [B, dim] of t [B]: [cos(t f_k), sin(t f_k)] with
  f_k = scale * max_period^(-k/(dim/2)), zero-padded when dim is odd.

  DiT / MAR: t in [0, 1], scale 1000, max_period 10000. FlexTok: scale 1000 / max_timestep,
  max_period 256.
  """
  half = dim // 2
  freqs = scale * jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim - 2 * half)))
