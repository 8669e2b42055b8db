"""A dense layer whose kernel carries logical axis names.

y = x @ kernel + bias, kernel [I, O] float32 with two logical names (e.g. ("embed", "mlp")), bias [O]
named after the output axis. The matmul runs in the compute dtype; parameters stay float32.

Dimension names: I input features, O output features.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.nn.embeddings import trunc_normal
from jaxtok.sharding import logical_init


class Dense(nnx.Module):
  """[..., I] -> [..., O] in `dtype`; kernel [I, O] (names), bias [O] (names[1]) unless use_bias=False."""

  def __init__(self, in_features: int, out_features: int, names: tuple[str | None, str | None], *,
               use_bias: bool = True, dtype=jnp.float32, kernel_init=None, bias_init=None,
               rngs: nnx.Rngs):
    kernel_init = kernel_init if kernel_init is not None else trunc_normal(0.02)
    bias_init = bias_init if bias_init is not None else nnx.initializers.zeros
    self.dtype, self.use_bias = dtype, use_bias
    self.kernel = nnx.Param(logical_init(kernel_init, *names)(
        rngs.params(), (in_features, out_features), jnp.float32))
    self.bias = nnx.Param(logical_init(bias_init, names[1])(
        rngs.params(), (out_features,), jnp.float32)) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.dot(x.astype(self.dtype), self.kernel.get_value().astype(self.dtype))
    if self.use_bias:
      y = y + self.bias.get_value().astype(self.dtype)
    return y
