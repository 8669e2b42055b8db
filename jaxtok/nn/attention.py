"""Multi-head self-attention with an optional boolean mask, fused or separate q/k/v projections.

The fused layout stores the in-projection as one kernel [W, 3, H, E] (+ bias [3, H, E]); this is
PyTorch `nn.MultiheadAttention.in_proj_weight` [3W, W] transposed and reshaped, so checkpoints map
onto it without reordering, and the head axis stays a separate dimension for tensor sharding.
Scores and softmax run in float32 whatever the compute dtype.

Dimension names: B batch, T query length, S key length, W width, H heads, E head dim.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.nn.embeddings import trunc_normal, xavier_uniform_fused
from jaxtok.sharding import logical_init


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          mask: jax.Array | None = None) -> jax.Array:
  """softmax(q k^T / sqrt(E)) v.

  Args:
    q: [B, T, H, E].
    k, v: [B, S, H, E].
    mask: optional bool, broadcastable to [B, H, T, S]; True = may attend. A row with every key
      masked gets uniform weights (it should not occur; callers keep at least one key per query).

  Returns:
    [B, T, H, E] in v's dtype.
  """
  scores = jnp.einsum("bthe,bshe->bhts", q, k, preferred_element_type=jnp.float32)
  scores = scores * jnp.float32(q.shape[-1])**-0.5
  if mask is not None:
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(scores, axis=-1)
  return jnp.einsum("bhts,bshe->bthe", weights.astype(v.dtype), v,
                    preferred_element_type=jnp.float32).astype(v.dtype)


class MultiHeadAttention(nnx.Module):
  """Self-attention x [B, T, W] -> [B, T, W] (PyTorch nn.MultiheadAttention semantics).

  Attributes (parameters, float32):
    fused: qkv [W, 3, H, E] and qkv_bias [3, H, E]; separate: query/key/value [W, H, E] (+ biases).
    out [H, E, W], out_bias [W].
  """

  def __init__(self, width: int, num_heads: int, *, fused_qkv: bool = True, use_bias: bool = True,
               dtype=jnp.float32, kernel_init=None, qkv_init=None, rngs: nnx.Rngs):
    if width % num_heads:
      raise ValueError(f"width must be divisible by num_heads, got width={width}, "
                       f"num_heads={num_heads}")
    self.width, self.num_heads, self.head_dim = width, num_heads, width // num_heads
    self.fused_qkv, self.use_bias, self.dtype = fused_qkv, use_bias, dtype
    h, e = num_heads, self.head_dim
    kernel_init = kernel_init if kernel_init is not None else trunc_normal(0.02)
    zeros = nnx.initializers.zeros
    if fused_qkv:
      qkv_init = qkv_init if qkv_init is not None else xavier_uniform_fused(width, 3)
      self.qkv = nnx.Param(logical_init(qkv_init, "embed", None, "heads", "kv")(
          rngs.params(), (width, 3, h, e), jnp.float32))
      self.qkv_bias = nnx.Param(logical_init(zeros, None, "heads", "kv")(
          rngs.params(), (3, h, e), jnp.float32)) if use_bias else None
    else:
      qkv_init = qkv_init if qkv_init is not None else kernel_init
      for name in ("query", "key", "value"):
        setattr(self, name, nnx.Param(logical_init(qkv_init, "embed", "heads", "kv")(
            rngs.params(), (width, h, e), jnp.float32)))
        setattr(self, name + "_bias", nnx.Param(logical_init(zeros, "heads", "kv")(
            rngs.params(), (h, e), jnp.float32)) if use_bias else None)
    self.out = nnx.Param(logical_init(kernel_init, "heads", "kv", "embed")(
        rngs.params(), (h, e, width), jnp.float32))
    self.out_bias = nnx.Param(logical_init(zeros, "embed")(
        rngs.params(), (width,), jnp.float32)) if use_bias else None

  def _project(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    dt = self.dtype
    if self.fused_qkv:
      qkv = jnp.einsum("btw,wche->btche", x, self.qkv.get_value().astype(dt))
      if self.use_bias:
        qkv = qkv + self.qkv_bias.get_value().astype(dt)
      return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    outs = []
    for name in ("query", "key", "value"):
      y = jnp.einsum("btw,whe->bthe", x, getattr(self, name).get_value().astype(dt))
      if self.use_bias:
        y = y + getattr(self, name + "_bias").get_value().astype(dt)
      outs.append(y)
    return tuple(outs)

  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    """x [B, T, W]; mask bool broadcastable to [B, H, T, T] (True = attend). Returns [B, T, W] in dtype."""
    x = x.astype(self.dtype)
    q, k, v = self._project(x)
    y = dot_product_attention(q, k, v, mask)
    y = jnp.einsum("bthe,hew->btw", y, self.out.get_value().astype(self.dtype))
    if self.use_bias:
      y = y + self.out_bias.get_value().astype(self.dtype)
    return y
