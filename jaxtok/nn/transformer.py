"""Pre-LN transformer blocks (open_clip `ResidualAttentionBlock`, as used by TiTok).

block(x) = x + attn(ln_1(x)); then x + mlp(ln_2(x)), with mlp = c_proj(gelu_erf(c_fc(.))), MLP 4x,
LayerNorm eps 1e-5. Normalisation statistics are float32 whatever the compute dtype.

Dimension names: B batch, T sequence, W width, M MLP width.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.nn.attention import MultiHeadAttention
from jaxtok.nn.embeddings import trunc_normal
from jaxtok.sharding import logical_init


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis with scale/bias [W] ('embed'), computed in float32."""

  def __init__(self, width: int, *, eps: float = 1e-5, dtype=jnp.float32, rngs: nnx.Rngs):
    self.eps, self.dtype = eps, dtype
    self.scale = nnx.Param(logical_init(nnx.initializers.ones, "embed")(
        rngs.params(), (width,), jnp.float32))
    self.bias = nnx.Param(logical_init(nnx.initializers.zeros, "embed")(
        rngs.params(), (width,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.scale.get_value() + self.bias.get_value()).astype(self.dtype)


class Dense(nnx.Module):
  """y = x @ kernel + bias with kernel [I, O] carrying two logical names; matmul in the compute dtype."""

  def __init__(self, in_features: int, out_features: int, names: tuple[str | None, str | None], *,
               use_bias: bool = True, dtype=jnp.float32, kernel_init=None, rngs: nnx.Rngs):
    kernel_init = kernel_init if kernel_init is not None else trunc_normal(0.02)
    self.dtype, self.use_bias = dtype, use_bias
    self.kernel = nnx.Param(logical_init(kernel_init, *names)(
        rngs.params(), (in_features, out_features), jnp.float32))
    self.bias = nnx.Param(logical_init(nnx.initializers.zeros, names[1])(
        rngs.params(), (out_features,), jnp.float32)) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.dot(x.astype(self.dtype), self.kernel.get_value().astype(self.dtype))
    if self.use_bias:
      y = y + self.bias.get_value().astype(self.dtype)
    return y


class Mlp(nnx.Module):
  """c_proj(gelu(c_fc(x))) with exact (erf) GELU; [.., W] -> [.., W] through [.., M]."""

  def __init__(self, width: int, hidden: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.c_fc = Dense(width, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.c_proj = Dense(hidden, width, ("mlp", "embed"), dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.c_proj(jax.nn.gelu(self.c_fc(x), approximate=False))


class Block(nnx.Module):
  """Pre-LN residual attention block [B, T, W] -> [B, T, W]."""

  def __init__(self, width: int, num_heads: int, *, mlp_ratio: float = 4.0, eps: float = 1e-5,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.ln_1 = LayerNorm(width, eps=eps, dtype=dtype, rngs=rngs)
    self.attn = MultiHeadAttention(width, num_heads, dtype=dtype, rngs=rngs)
    self.ln_2 = LayerNorm(width, eps=eps, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(width, int(width * mlp_ratio), dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    x = x + self.attn(self.ln_1(x), mask=mask)
    return x + self.mlp(self.ln_2(x))


def _run_block(block: Block, x: jax.Array, mask: jax.Array | None) -> jax.Array:
  return block(x, mask)


class Transformer(nnx.Module):
  """A stack of `depth` pre-LN blocks; `remat=True` recomputes each block's activations in backward.

  Call: x [B, T, W], optional mask bool broadcastable to [B, H, T, T] -> [B, T, W] in the compute
  dtype.
  """

  def __init__(self, width: int, depth: int, num_heads: int, *, mlp_ratio: float = 4.0,
               eps: float = 1e-5, dtype=jnp.float32, remat: bool = False, rngs: nnx.Rngs):
    self.remat = remat
    self.blocks = nnx.List([
        Block(width, num_heads, mlp_ratio=mlp_ratio, eps=eps, dtype=dtype, rngs=rngs)
        for _ in range(depth)
    ])

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    run = nnx.remat(_run_block) if self.remat else _run_block
    for block in self.blocks:
      x = run(block, x, mask)
    return x
