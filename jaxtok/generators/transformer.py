"""The token-model transformer shared by the generators: pre-norm RMSNorm, SwiGLU, rotary positions.

This follows the LlamaGen/Llama layout used by modern image AR models (bias-free projections, RMSNorm,
SwiGLU MLP, rotary position embedding on queries and keys), causal for GPT-style models and
bidirectional for MaskGIT-style ones. Causal stacks also run incrementally against a preallocated
key/value cache: `prefill` writes a prompt's keys and values, `step` appends one token at a given
position, and both give exactly the logits a full recompute gives (tested).

Dimension names: B batch, T sequence, S cache length, W width, H heads, E head dim, L layers.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.sharding import logical_init

_INIT = nnx.initializers.normal(0.02)


class LayerCache(NamedTuple):
  """Keys and values of one layer: k, v [B, S, H, E] in the compute dtype."""
  k: jax.Array
  v: jax.Array


def rope(x: jax.Array, positions: jax.Array, theta: float = 10000.0) -> jax.Array:
  """Rotary position embedding (half-split layout) of x [B, T, H, E] at integer positions [B, T] or [T]."""
  e = x.shape[-1]
  freqs = theta ** (-jnp.arange(0, e // 2, dtype=jnp.float32) * 2.0 / e)
  angles = jnp.asarray(positions, jnp.float32)[..., None] * freqs  # [..., T, E/2]
  if angles.ndim == 2:
    angles = angles[None]
  cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return out.astype(x.dtype)


class RMSNorm(nnx.Module):
  """RMSNorm with a learned scale, computed in float32."""

  def __init__(self, dim: int, *, eps: float = 1e-6, rngs: nnx.Rngs):
    del rngs
    self.eps = eps
    self.scale = nnx.Param(logical_init(nnx.initializers.ones, "embed")(None, (dim,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * self.scale.get_value()).astype(x.dtype)


class Attention(nnx.Module):
  """Multi-head self-attention with rotary positions and an optional KV cache."""

  def __init__(self, width: int, heads: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    if width % heads:
      raise ValueError(f"width must be divisible by heads, got width={width}, heads={heads}")
    self.heads, self.head_dim, self.dtype = heads, width // heads, dtype
    self.qkv = nnx.Linear(width, 3 * width, use_bias=False, dtype=dtype,
                          kernel_init=logical_init(_INIT, "embed", "heads"), rngs=rngs)
    self.out = nnx.Linear(width, width, use_bias=False, dtype=dtype,
                          kernel_init=logical_init(_INIT, "heads", "embed"), rngs=rngs)

  def _qkv(self, x, positions):
    b, t, _ = x.shape
    q, k, v = jnp.split(self.qkv(x).reshape(b, t, 3 * self.heads, self.head_dim), 3, axis=2)
    return rope(q, positions), rope(k, positions), v

  def _attend(self, q, k, v, mask):
    # Scores and softmax in float32 whatever the compute dtype.
    scores = jnp.einsum("bthe,bshe->bhts", q, k, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(self.head_dim))
    if mask is not None:
      scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    p = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    o = jnp.einsum("bhts,bshe->bthe", p, v)
    return self.out(o.reshape(o.shape[0], o.shape[1], -1))

  def __call__(self, x, positions, mask):
    """Full attention over x [B, T, W]; mask [B or 1, 1, T, T] bool (True = attend) or None."""
    q, k, v = self._qkv(x, positions)
    return self._attend(q, k, v, mask)

  def cached(self, x, positions, start, cache: LayerCache):
    """Attention of x [B, T, W] at positions start..start+T-1 after writing its keys/values into cache.

    Returns (output [B, T, W], new cache). Query t sees cache slots <= start + t.
    """
    q, k, v = self._qkv(x, positions)
    cache = LayerCache(
        jax.lax.dynamic_update_slice_in_dim(cache.k, k.astype(cache.k.dtype), start, axis=1),
        jax.lax.dynamic_update_slice_in_dim(cache.v, v.astype(cache.v.dtype), start, axis=1))
    slots = jnp.arange(cache.k.shape[1])
    mask = slots[None, :] <= (start + jnp.arange(x.shape[1]))[:, None]  # [T, S]
    return self._attend(q, cache.k, cache.v, mask[None, None]), cache


class SwiGLU(nnx.Module):
  """SwiGLU MLP: out(silu(gate(x)) * up(x)), bias-free."""

  def __init__(self, width: int, hidden: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.gate = nnx.Linear(width, hidden, use_bias=False, dtype=dtype,
                           kernel_init=logical_init(_INIT, "embed", "mlp"), rngs=rngs)
    self.up = nnx.Linear(width, hidden, use_bias=False, dtype=dtype,
                         kernel_init=logical_init(_INIT, "embed", "mlp"), rngs=rngs)
    self.down = nnx.Linear(hidden, width, use_bias=False, dtype=dtype,
                           kernel_init=logical_init(_INIT, "mlp", "embed"), rngs=rngs)

  def __call__(self, x):
    return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class Block(nnx.Module):
  """x + attn(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, width: int, heads: int, *, mlp_ratio: float = 4.0, dtype=jnp.float32,
               rngs: nnx.Rngs):
    # Llama's SwiGLU hidden size: 2/3 of mlp_ratio * width, rounded up to a multiple of 8.
    hidden = int(2 * mlp_ratio * width / 3)
    hidden = 8 * ((hidden + 7) // 8)
    self.norm1 = RMSNorm(width, rngs=rngs)
    self.attn = Attention(width, heads, dtype=dtype, rngs=rngs)
    self.norm2 = RMSNorm(width, rngs=rngs)
    self.mlp = SwiGLU(width, hidden, dtype=dtype, rngs=rngs)

  def __call__(self, x, positions, mask):
    x = x + self.attn(self.norm1(x), positions, mask)
    return x + self.mlp(self.norm2(x))

  def cached(self, x, positions, start, cache):
    h, cache = self.attn.cached(self.norm1(x), positions, start, cache)
    x = x + h
    return x + self.mlp(self.norm2(x)), cache


class Transformer(nnx.Module):
  """A stack of `Block`s over token ids with an input embedding, a final norm and an output head.

  Args:
    input_vocab: size of the input embedding table (codebook + special ids such as mask/class ids).
    output_vocab: number of logits per position (the codebook size).
    width, depth, heads, mlp_ratio: transformer shape.
    causal: GPT-style causal mask (True) or bidirectional (False).
    dtype: compute dtype (parameters stay float32; attention softmax and norms run in float32).
  """

  def __init__(self, *, input_vocab: int, output_vocab: int, width: int, depth: int, heads: int,
               mlp_ratio: float = 4.0, causal: bool = True, dtype=jnp.float32, rngs: nnx.Rngs):
    self.causal, self.dtype, self.output_vocab = causal, dtype, output_vocab
    self.embed = nnx.Embed(input_vocab, width, dtype=dtype,
                           embedding_init=logical_init(_INIT, "vocab", "embed"), rngs=rngs)
    self.blocks = nnx.List([Block(width, heads, mlp_ratio=mlp_ratio, dtype=dtype, rngs=rngs)
                            for _ in range(depth)])
    self.norm = RMSNorm(width, rngs=rngs)
    self.head = nnx.Linear(width, output_vocab, use_bias=False, dtype=dtype,
                           kernel_init=logical_init(_INIT, "embed", "vocab"), rngs=rngs)

  def __call__(self, ids: jax.Array) -> jax.Array:
    """Logits [B, T, output_vocab] (float32) for input ids [B, T] int32."""
    return self.forward_embedded(self.embed(ids))

  def forward_embedded(self, x: jax.Array) -> jax.Array:
    """Logits [B, T, output_vocab] for already-embedded inputs x [B, T, W] (e.g. a projected condition
    followed by token embeddings)."""
    t = x.shape[1]
    positions = jnp.arange(t)
    mask = jnp.tril(jnp.ones((t, t), bool))[None, None] if self.causal else None
    x = x.astype(self.dtype)
    for block in self.blocks:
      x = block(x, positions, mask)
    return self.head(self.norm(x)).astype(jnp.float32)

  def init_cache(self, batch: int, length: int, dtype=None) -> tuple[LayerCache, ...]:
    """Zeroed per-layer caches of `length` slots (k, v [B, length, H, E])."""
    if not self.causal:
      raise ValueError("init_cache needs a causal transformer; this one is bidirectional")
    attn = self.blocks[0].attn
    shape = (batch, length, attn.heads, attn.head_dim)
    dt = dtype or self.dtype
    return tuple(LayerCache(jnp.zeros(shape, dt), jnp.zeros(shape, dt)) for _ in self.blocks)

  def extend(self, ids: jax.Array, start, cache: tuple[LayerCache, ...]):
    """Runs ids [B, T] at positions start..start+T-1 against the cache.

    Returns (logits [B, T, output_vocab] float32, new cache). `start` may be traced.
    """
    return self.extend_embedded(self.embed(ids), start, cache)

  def extend_embedded(self, x: jax.Array, start, cache: tuple[LayerCache, ...]):
    """`extend` for already-embedded inputs x [B, T, W]."""
    positions = start + jnp.arange(x.shape[1])
    x = x.astype(self.dtype)
    new = []
    for block, c in zip(self.blocks, cache):
      x, c = block.cached(x, positions, start, c)
      new.append(c)
    return self.head(self.norm(x)).astype(jnp.float32), tuple(new)
