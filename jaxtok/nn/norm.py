"""Normalisation over the last axis: LayerNorm or RMSNorm, with or without affine parameters.

Statistics are computed in float32 whatever the compute dtype (bf16 sums of squares lose the small
variances that matter most), and the result is returned in the compute dtype.

  layer: (x - mean) / sqrt(var + eps) * scale + bias
  rms:   x / sqrt(mean(x^2) + eps) * scale

Dimension names: W width (the normalised axis).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.sharding import logical_init

KINDS = ("layer", "rms")


def normalize(x: jax.Array, kind: str = "layer", eps: float = 1e-5) -> jax.Array:
  """Parameter-free layer or RMS normalisation of x [..., W]; float32 [..., W]."""
  x32 = x.astype(jnp.float32)
  if kind == "rms":
    return x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return (x32 - mean) * jax.lax.rsqrt(var + eps)


class Norm(nnx.Module):
  """x [..., W] -> [..., W] in `dtype`.

  Attributes (float32, logical axis 'embed'): scale [W] when affine; bias [W] when affine and
  kind == "layer" and use_bias (RMSNorm never has a bias).
  """

  def __init__(self, width: int, *, kind: str = "layer", eps: float = 1e-5, affine: bool = True,
               use_bias: bool = True, dtype=jnp.float32, rngs: nnx.Rngs):
    if kind not in KINDS:
      raise ValueError(f"norm kind must be one of {KINDS}, got {kind!r}")
    self.kind, self.eps, self.dtype = kind, eps, dtype
    init = lambda f: nnx.Param(logical_init(f, "embed")(rngs.params(), (width,), jnp.float32))
    self.scale = init(nnx.initializers.ones) if affine else None
    self.bias = init(nnx.initializers.zeros) if affine and use_bias and kind == "layer" else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = normalize(x, self.kind, self.eps)
    if self.scale is not None:
      y = y * self.scale.get_value()
    if self.bias is not None:
      y = y + self.bias.get_value()
    return y.astype(self.dtype)
