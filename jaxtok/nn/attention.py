"""Multi-head attention: the one attention of jaxtok (masks, RoPE, qk-norm, KV cache, kernel switch).

Parameters: the in-projection is one fused tensor qkv [W, 3, H, E] (+ qkv_bias [3, H, E]), so a
tensor-parallel split over heads never cuts across q/k/v and PyTorch's `in_proj_weight` [3W, W] maps
onto it by a transpose and a reshape; the out-projection is out [H, E, W] (+ out_bias [W]).

The kernel is `jax.nn.dot_product_attention` with `implementation` None (JAX's choice), "xla" or
"cudnn" (the fused flash kernel on NVIDIA GPUs). cuDNN runs only bf16/fp16, head dims that are a
multiple of 8 up to 128, and (with a mask or an additive bias) even query and key lengths; for
anything else `attend` falls back to "xla" and logs the reason once. Scores and softmax run in
float32 whatever the compute dtype (both kernels do this).

Masks: `mask` is boolean (True = may attend) or additive (float, added to the scaled scores), any
shape broadcastable to [B, H, T, S] (e.g. [T, S], [B, 1, 1, S]); `causal=True` adds the causal mask
(query t sees keys <= t). A query whose keys are all masked gets uniform weights; callers keep at
least one key per query.

KV cache: `init_cache` preallocates k, v [B, H, S, E] in the compute dtype; `extend(x, cache, start)`
writes the keys/values of x at slots start..start+T-1 and attends to all slots <= each query's own
(prefill is extend at 0 with the prompt; then one token at a time), exactly what the full causal
recompute gives (tested). `start` may be traced. The cache is heads-major and `attend` reads it in
that layout (`kv_heads_major=True`: two einsums with (B, H) as the batch dimensions of both
contractions, whatever `implementation`): with [B, S, H, E] XLA:CPU transposed the whole cache
of every layer at every decoding step, about half of an AR sampling step at RAR's size
(benchmarks/RESULTS.md, "Against the originals").

Cross-attention: queries from x [B, T, W], keys and values from a context [B, S, Wc].
  - `Attention(cross=True)` (implied by context_dim = Wc != W) has its own projections q [W, H, E]
    (+ q_bias [H, E]) and kv [Wc, 2, H, E] (+ kv_bias [2, H, E]) instead of the fused qkv, and
    needs `context` at every call.
  - A self-attention (fused qkv) called with `context` [B, S, W] projects x with the q slice
    and the context with the k, v slices of the same qkv (one set of weights for both, e.g. a
    pooling probe attending to tokens).
  `mask` then ranges over context positions (broadcastable to [B, H, T, S]); causal must be False.
  RoPE rotates q by `positions` and k by `context_positions` only when given (D-AR rotates only
  the queries of its cross-attention). Cached decoding: `context_kv(context)` computes the
  context's k, v [B, H, S, E] once; `attend_context(x, kv)` attends to them at every step (no
  writes: the context does not grow).
Public pieces for models that wire attention themselves (MM-DiT's joint attention):
`project(x) -> q, k, v`, `attend` over any q, k, v, then `output(y)`.

Dimension names: B batch, T query length, S key length, W width, Wc context width, H heads,
E head dim.
"""
from __future__ import annotations

import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok import sharding
from jaxtok.nn import norm as norm_lib
from jaxtok.nn import rope as rope_lib
from jaxtok.nn.embeddings import trunc_normal, xavier_uniform_fused
from jaxtok.sharding import logical_init

IMPLEMENTATIONS = (None, "xla", "cudnn")
_log = logging.getLogger(__name__)
_LOGGED: set[str] = set()


class KVCache(NamedTuple):
  """Keys and values k, v [B, H, S, E] (a scanned Stack keeps them stacked: [L, B, H, S, E])."""
  k: jax.Array
  v: jax.Array


def check_implementation(implementation) -> None:
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")


def _cudnn_refusal(q: jax.Array, k: jax.Array, has_mask: bool) -> str | None:
  """Why cuDNN cannot run this call (None if it can); the checks mirror jax's cuDNN wrapper."""
  if jax.default_backend() != "gpu":
    return f"no GPU (backend {jax.default_backend()})"
  if q.dtype not in (jnp.bfloat16, jnp.float16):
    return f"dtype {q.dtype} (cuDNN runs bf16/fp16)"
  e = q.shape[-1]
  if e % 8 or e > 128:
    return f"head dim {e} (cuDNN needs a multiple of 8 up to 128)"
  if has_mask and (q.shape[1] % 2 or k.shape[1] % 2):
    return f"odd query/key length {q.shape[1]}/{k.shape[1]} with a mask (cuDNN needs even ones)"
  return None


def _as_4d(m: jax.Array) -> jax.Array:
  m = jnp.asarray(m)
  return m.reshape((1,) * (4 - m.ndim) + m.shape) if m.ndim < 4 else m


def _attend_heads_major(q, k, v, mask, scale):
  """The same attention with k, v [B, H, S, E] as two einsums whose batch dimensions are (B, H), so
  a KV cache is read in place (no per-step transpose of it): float32 scores, a masked key gets the
  most negative float (not -inf), so a query with every key masked gets uniform weights, as
  `jax.nn.dot_product_attention` does."""
  probs = jax.nn.softmax(_scores(q, k, mask, scale, "bthe,bhse->bhts"), axis=-1).astype(q.dtype)
  return jnp.einsum("bhts,bhse->bthe", probs, v)


def _scores(q, k, mask, scale, spec):
  """Float32 scores [B, H, T, S] = q k^T * scale (einsum `spec`), a bool mask's masked keys at the
  most negative float, an additive mask added."""
  scale = scale if scale is not None else q.shape[-1]**-0.5
  scores = jnp.einsum(spec, q, k, preferred_element_type=jnp.float32) * jnp.float32(scale)
  if mask is not None:
    mask = _as_4d(mask)
    if jnp.issubdtype(mask.dtype, jnp.bool_):
      scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    else:
      scores = scores + mask.astype(jnp.float32)
  return scores


def dropout(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
  """Inverted dropout: each entry kept with probability 1 - rate and scaled by 1 / (1 - rate)."""
  if isinstance(rate, (int, float)) and rate == 0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


def _attend_dropout(q, k, v, mask, causal, scale, rate, rng):
  """The attention with dropout on the probabilities (torch SDPA's dropout_p, timm's attn_drop):
  float32 scores, masked keys at the most negative float, softmax, then `dropout`."""
  scores = _scores(q, k, mask, scale, "bthe,bshe->bhts")
  if causal:
    t, s = scores.shape[-2:]
    scores = jnp.where(jnp.tril(jnp.ones((t, s), bool)), scores, jnp.finfo(jnp.float32).min)
  probs = dropout(jax.nn.softmax(scores, axis=-1), rate, rng).astype(q.dtype)
  return jnp.einsum("bhts,bshe->bthe", probs, v)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, *, mask: jax.Array | None = None,
           causal: bool = False, scale: float | None = None, implementation=None,
           kv_heads_major: bool = False, dropout_rate: float = 0.0,
           dropout_rng: jax.Array | None = None) -> jax.Array:
  """softmax(q k^T * scale + additive mask, masked) v through `jax.nn.dot_product_attention`.

  Args:
    q: [B, T, H, E]; k, v: [B, S, H, E] ([B, H, S, E] with kv_heads_major, the KV cache's layout:
      then two einsums over (B, H) compute it, any implementation), all in one dtype.
    mask: None, bool (True = attend) or float (additive), broadcastable to [B, H, T, S].
    causal: also mask keys after the query (query t sees keys <= t; needs T == S).
    scale: score scale; None = 1/sqrt(E).
    implementation: None, "xla" or "cudnn" (falls back to "xla", logged once per reason).
    dropout_rate, dropout_rng: dropout on the attention probabilities (training), applied when the
      rate is > 0 and a key is given; then the scores are computed with einsums (no fused kernel).

  Returns:
    [B, T, H, E] in v's dtype.
  """
  check_implementation(implementation)
  if dropout_rate > 0 and dropout_rng is not None:
    if kv_heads_major:
      raise ValueError("attend: attention dropout is for training passes, not the KV cache's layout")
    return _attend_dropout(q, k, v, mask, causal, scale, dropout_rate, dropout_rng)
  if kv_heads_major:
    if causal:
      raise ValueError("attend: causal=True needs k, v [B, S, H, E]; pass the causal mask instead")
    return _attend_heads_major(q, k, v, mask, scale)
  bias = None
  if mask is not None:
    mask = _as_4d(mask)
    if not jnp.issubdtype(mask.dtype, jnp.bool_):
      bias, mask = mask.astype(jnp.float32), None
  if implementation == "cudnn":
    reason = _cudnn_refusal(q, k, mask is not None or bias is not None)
    if causal and q.shape[1] != k.shape[1]:
      reason = f"causal with query length {q.shape[1]} != key length {k.shape[1]}"
    if reason is not None:
      if reason not in _LOGGED:
        _LOGGED.add(reason)
        _log.warning("attention: cudnn refused (%s); using xla", reason)
      implementation = "xla"
    elif bias is not None:
      bias = bias.astype(q.dtype)
  return jax.nn.dot_product_attention(q, k, v, bias, mask, scale=scale, is_causal=causal,
                                      implementation=implementation)


class Attention(nnx.Module):
  """Self-attention (or cross-attention to a context) x [B, T, W] -> [B, T, W] in the compute dtype.

  Args:
    width, num_heads: W and H; head_dim E defaults to W / H.
    cross: separate q [W, H, E] and kv [Wc, 2, H, E] projections (+ q_bias, kv_bias) for
      cross-attention to a context [B, S, Wc]; implied by context_dim != width.
    context_dim: Wc (default W).
    qkv_bias, out_bias: biases of the in- and out-projections.
    qk_norm: None, "layer" or "rms": per-head normalisation of q and k (before RoPE), without
      affine parameters unless qk_norm_affine (then scale [E] per norm, and bias [E] too with
      qk_norm_bias and "layer": timm's / RAR's full LayerNorm).
    qk_norm_eps: its epsilon.
    rope: None, "1d", "2d" or "angles" (`nn.rope`; positions then come with each call; 1D defaults to 0..T-1).
    rope_theta: RoPE base.
    scale: score scale; None = 1/sqrt(E).
    qkv_clip: None, or c > 0: q, k and v are clamped to [-c, c] right after their projections
      (before qk-norm and RoPE; OLMo's `clip_qkv`).
    implementation: None, "xla" or "cudnn" (see `attend`).
    dtype: compute dtype; parameters are float32.
    qkv_init, out_init: initializers (default PyTorch MultiheadAttention's xavier-uniform on the
      fused in-projection, or on each of q, k, v for cross; trunc_normal(0.02) out); qkv_init
      also initialises q and kv of a cross Attention.
  """

  def __init__(self, width: int, num_heads: int, *, head_dim: int | None = None,
               cross: bool = False, context_dim: int | None = None, qkv_bias: bool = True,
               out_bias: bool = True, qk_norm: str | None = None,
               qk_norm_affine: bool = False, qk_norm_bias: bool = False, qk_norm_eps: float = 1e-5,
               rope: str | None = None, rope_theta: float = 10000.0, scale: float | None = None,
               implementation=None, dtype=jnp.float32, qkv_init=None, out_init=None,
               qkv_clip: float | None = None, rngs: nnx.Rngs):
    if qkv_clip is not None and (isinstance(qkv_clip, bool) or not isinstance(qkv_clip, (int, float))
                                 or not qkv_clip > 0):
      raise ValueError(f"qkv_clip must be None or a number > 0, got {qkv_clip!r}")
    self.qkv_clip = None if qkv_clip is None else float(qkv_clip)
    if head_dim is None:
      if width % num_heads:
        raise ValueError(f"width must be divisible by heads, got width={width}, "
                         f"num_heads={num_heads}")
      head_dim = width // num_heads
    if rope not in (None,) + rope_lib.KINDS:
      raise ValueError(f"rope must be one of {rope_lib.KINDS} or None, got {rope!r}")
    check_implementation(implementation)
    if context_dim is not None and (isinstance(context_dim, bool) or not isinstance(context_dim, int)
                                    or context_dim < 1):
      raise ValueError(f"context_dim must be None or an int >= 1, got {context_dim!r}")
    self.cross = bool(cross) or context_dim not in (None, width)
    self.context_dim = context_dim or width
    self.width, self.num_heads, self.head_dim = width, num_heads, head_dim
    self.rope, self.rope_theta, self.scale = rope, rope_theta, scale
    self.implementation, self.dtype = implementation, dtype
    h, e = num_heads, head_dim
    qkv_init = qkv_init if qkv_init is not None or self.cross else xavier_uniform_fused(width, 3)
    out_init = out_init if out_init is not None else trunc_normal(0.02)
    zeros = nnx.initializers.zeros
    if self.cross:  # xavier-uniform on q [W, W] and on each of k, v [W, Wc] (torch's k/v_proj_weight)
      self.qkv = self.qkv_bias = None
      q_init = qkv_init if qkv_init is not None else nnx.initializers.variance_scaling(
          1.0, "fan_avg", "uniform", in_axis=0, out_axis=(1, 2))
      kv_init = qkv_init if qkv_init is not None else nnx.initializers.variance_scaling(
          1.0, "fan_avg", "uniform", in_axis=0, out_axis=(2, 3), batch_axis=(1,))
      self.q = nnx.Param(logical_init(q_init, "embed", "heads", "kv")(
          rngs.params(), (width, h, e), jnp.float32))
      self.q_bias = nnx.Param(logical_init(zeros, "heads", "kv")(
          rngs.params(), (h, e), jnp.float32)) if qkv_bias else None
      self.kv = nnx.Param(logical_init(kv_init, "embed", None, "heads", "kv")(
          rngs.params(), (self.context_dim, 2, h, e), jnp.float32))
      self.kv_bias = nnx.Param(logical_init(zeros, None, "heads", "kv")(
          rngs.params(), (2, h, e), jnp.float32)) if qkv_bias else None
    else:
      self.q = self.q_bias = self.kv = self.kv_bias = None
      self.qkv = nnx.Param(logical_init(qkv_init, "embed", None, "heads", "kv")(
          rngs.params(), (width, 3, h, e), jnp.float32))
      self.qkv_bias = nnx.Param(logical_init(zeros, None, "heads", "kv")(
          rngs.params(), (3, h, e), jnp.float32)) if qkv_bias else None
    self.out = nnx.Param(logical_init(out_init, "heads", "kv", "embed")(
        rngs.params(), (h, e, width), jnp.float32))
    self.out_bias = nnx.Param(logical_init(zeros, "embed")(
        rngs.params(), (width,), jnp.float32)) if out_bias else None
    make_norm = lambda: norm_lib.Norm(e, kind=qk_norm, eps=qk_norm_eps, affine=qk_norm_affine,
                                      use_bias=qk_norm_bias, dtype=dtype, rngs=rngs)
    self.q_norm = make_norm() if qk_norm else None
    self.k_norm = make_norm() if qk_norm else None

  def project(self, x: jax.Array, positions: jax.Array | None = None, *,
              context: jax.Array | None = None,
              context_positions: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q [B, T, H, E] of x [B, T, W] and k, v [B, T, H, E] of x (or [B, S, H, E] of context
    [B, S, Wc]), in the compute dtype, qk-normalised and rotated (module docstring)."""
    if context is None:
      if self.cross:
        raise ValueError("a cross Attention needs context [B, S, Wc]")
      dt = self.dtype
      qkv = jnp.einsum("btw,wche->btche", x.astype(dt), self.qkv.get_value().astype(dt))
      if self.qkv_bias is not None:
        qkv = qkv + self.qkv_bias.get_value().astype(dt)
      qkv = self._clip(qkv)
      q, k, v = (sharding.constrain(qkv[:, :, i], ("act_batch", "act_seq", "act_heads", None))
                 for i in range(3))
      if self.q_norm is not None:
        q, k = self.q_norm(q), self.k_norm(k)
      if self.rope is not None:
        positions = self._positions(positions, x.shape[1])
        q = rope_lib.apply(q, positions, self.rope, self.rope_theta)
        k = rope_lib.apply(k, positions, self.rope, self.rope_theta)
      return q, k, v
    k, v = self._context_kv(context, context_positions)
    return self._query(x, positions), k, v

  def _clip(self, t: jax.Array) -> jax.Array:
    """t clamped to [-qkv_clip, qkv_clip] (unchanged without qkv_clip)."""
    return t if self.qkv_clip is None else jnp.clip(t, -self.qkv_clip, self.qkv_clip)

  def _positions(self, positions, length: int):
    if positions is None:
      if self.rope == "2d":
        raise ValueError("2D RoPE needs positions [T, 2] or [B, T, 2] (e.g. rope.grid_positions)")
      if self.rope == "angles":
        raise ValueError("angle RoPE needs per-channel angles [T, E] or [B, T, E] as positions")
      positions = jnp.arange(length)
    return positions

  def _in_weights(self):
    """(wq [W, H, E], bq [H, E] | None, wkv [Wc, 2, H, E], bkv [2, H, E] | None): the separate
    cross projections, or the slices of the fused qkv."""
    if self.cross:
      get = lambda p: None if p is None else p.get_value()
      return get(self.q), get(self.q_bias), get(self.kv), get(self.kv_bias)
    qkv, bias = self.qkv.get_value(), None if self.qkv_bias is None else self.qkv_bias.get_value()
    return qkv[:, 0], None if bias is None else bias[0], qkv[:, 1:], None if bias is None else bias[1:]

  def _query(self, x: jax.Array, positions) -> jax.Array:
    """q [B, T, H, E] of x [B, T, W] for cross-attention: normalised, rotated by positions."""
    dt = self.dtype
    wq, bq, _, _ = self._in_weights()
    q = jnp.einsum("btw,whe->bthe", x.astype(dt), wq.astype(dt))
    if bq is not None:
      q = q + bq.astype(dt)
    q = self._clip(q)
    q = sharding.constrain(q, ("act_batch", "act_seq", "act_heads", None))
    if self.q_norm is not None:
      q = self.q_norm(q)
    if self.rope is not None:
      q = rope_lib.apply(q, self._positions(positions, x.shape[1]), self.rope, self.rope_theta)
    return q

  def _context_kv(self, context: jax.Array, context_positions) -> tuple[jax.Array, jax.Array]:
    """k, v [B, S, H, E] of context [B, S, Wc]; k rotated only when context_positions is given."""
    _, _, wkv, bkv = self._in_weights()
    if context.ndim != 3 or context.shape[-1] != wkv.shape[0]:
      raise ValueError(f"context must be [B, S, {wkv.shape[0]}], got {tuple(context.shape)}")
    dt = self.dtype
    kv = jnp.einsum("bsw,wche->bsche", context.astype(dt), wkv.astype(dt))
    if bkv is not None:
      kv = kv + bkv.astype(dt)
    kv = self._clip(kv)
    k, v = (sharding.constrain(kv[:, :, i], ("act_batch", "act_seq", "act_heads", None))
            for i in range(2))
    if self.k_norm is not None:
      k = self.k_norm(k)
    if self.rope is not None and context_positions is not None:
      k = rope_lib.apply(k, context_positions, self.rope, self.rope_theta)
    return k, v

  def output(self, y: jax.Array, *, rows: bool = False) -> jax.Array:
    """The out-projection of attention outputs y [B, T, H, E]: [B, T, W] in the compute dtype.

    rows=True (the cached steps of `extend`): the same product as one [B*T, H*E] x [H*E, W] matmul.
    With the einsum, XLA:CPU transposed the whole kernel at every decoding step (cheaper, it
    judged, than moving the step's few rows of y into (h, e) order): 12 kernel copies per step at
    RAR's size. Training keeps the einsum (its rounding is the main job's)."""
    if rows:
      h, e, w = self.out.get_value().shape
      y = jnp.dot(y.reshape(y.shape[:2] + (h * e,)),
                  self.out.get_value().astype(self.dtype).reshape(h * e, w))
    else:
      y = jnp.einsum("bthe,hew->btw", y, self.out.get_value().astype(self.dtype))
    if self.out_bias is not None:
      y = y + self.out_bias.get_value().astype(self.dtype)
    return y

  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None, causal: bool = False,
               positions: jax.Array | None = None, context: jax.Array | None = None,
               context_positions: jax.Array | None = None, dropout_rate: float = 0.0,
               dropout_rng: jax.Array | None = None) -> jax.Array:
    """x [B, T, W]; mask bool/additive broadcastable to [B, H, T, T] ([B, H, T, S] with context
    [B, S, Wc]); positions for RoPE ([T] or [B, T] for 1D, [T, 2] or [B, T, 2] for 2D), and
    context_positions likewise for the context; dropout_rate / dropout_rng: dropout on the
    attention probabilities (`attend`). Returns [B, T, W] in the compute dtype."""
    if context is not None and causal:
      raise ValueError("causal=True needs self-attention; cross-attention takes a mask over the "
                       "context positions")
    q, k, v = self.project(x, positions, context=context, context_positions=context_positions)
    y = attend(q, k, v, mask=mask, causal=causal, scale=self.scale,
               implementation=self.implementation, dropout_rate=dropout_rate,
               dropout_rng=dropout_rng)
    return self.output(y)

  def context_kv(self, context: jax.Array, *, context_positions: jax.Array | None = None,
                 dtype=None) -> KVCache:
    """The context's keys/values k, v [B, H, S, E] (the cache layout; compute dtype unless given),
    computed once for `attend_context` at every decoding step."""
    k, v = self._context_kv(context, context_positions)
    heads_major = lambda t: t.transpose(0, 2, 1, 3).astype(dtype or self.dtype)
    return KVCache(heads_major(k), heads_major(v))

  def attend_context(self, x: jax.Array, kv: KVCache, *, mask: jax.Array | None = None,
                     positions: jax.Array | None = None) -> jax.Array:
    """Cross-attention of x [B, T, W] to precomputed context keys/values kv (`context_kv`):
    [B, T, W], equal to calling the module with that context (tested). mask over the context
    positions, broadcastable to [B, H, T, S]; positions rotate the queries under RoPE."""
    q = self._query(x, positions)
    y = attend(q, kv.k.astype(q.dtype), kv.v.astype(q.dtype), mask=mask, scale=self.scale,
               implementation=self.implementation, kv_heads_major=True)
    return self.output(y)

  def init_cache(self, batch: int, length: int, dtype=None) -> KVCache:
    """Zeroed k, v [batch, H, length, E] (compute dtype unless given)."""
    shape = (batch, self.num_heads, length, self.head_dim)
    dt = dtype or self.dtype
    return KVCache(jnp.zeros(shape, dt), jnp.zeros(shape, dt))

  def extend(self, x: jax.Array, cache: KVCache, start, *, mask: jax.Array | None = None,
             positions: jax.Array | None = None, causal: bool = True) -> tuple[jax.Array, KVCache]:
    """Attention of x [B, T, W] at slots start..start+T-1 against the cache.

    Writes x's keys/values into the cache first; query t sees slots <= start + t (and, with `mask`
    broadcastable to [B, H, T, S], only where it is True / adds it). causal=False drops the
    slots <= start + t rule: then `mask` alone (required, boolean) says which slots each query sees,
    and it must hide the slots not yet written (a block of queries that see each other, as NAR's
    tokens of one distance do). RoPE positions default to start + 0..T-1. Returns (y [B, T, W],
    new cache).
    """
    if self.cross:
      raise ValueError("extend writes self-attention keys; a cross Attention attends to fixed "
                       "context keys: use context_kv once, then attend_context")
    if not causal and (mask is None or not jnp.issubdtype(jnp.asarray(mask).dtype, jnp.bool_)):
      raise ValueError(f"extend(causal=False) needs a boolean mask over the cache slots, got "
                       f"{None if mask is None else jnp.asarray(mask).dtype}")
    if positions is None and self.rope == "1d":
      positions = start + jnp.arange(x.shape[1])
    q, k, v = self.project(x, positions)
    heads_major = lambda t, c: t.transpose(0, 2, 1, 3).astype(c.dtype)  # [B, T, H, E] -> [B, H, T, E]
    cache = KVCache(
        jax.lax.dynamic_update_slice_in_dim(cache.k, heads_major(k, cache.k), start, axis=2),
        jax.lax.dynamic_update_slice_in_dim(cache.v, heads_major(v, cache.v), start, axis=2))
    slots = np.arange(cache.k.shape[2])
    seen = slots[None, :] <= (start + jnp.arange(x.shape[1]))[:, None]  # [T, S]
    if not causal:
      full = mask
    elif mask is None:
      full = seen
    elif jnp.issubdtype(jnp.asarray(mask).dtype, jnp.bool_):
      full = seen & mask
    else:
      full = jnp.where(seen, jnp.asarray(mask, jnp.float32), jnp.finfo(jnp.float32).min)
    y = attend(q, cache.k.astype(q.dtype), cache.v.astype(q.dtype), mask=full, scale=self.scale,
               implementation=self.implementation, kv_heads_major=True)
    return self.output(y, rows=True), cache
