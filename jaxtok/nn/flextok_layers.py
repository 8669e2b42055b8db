"""FlexTok's transformer pieces (apple/ml-flextok `model/layers`, `model/trunks`, `model/utils/posembs`).

These differ from the ViT/TiTok blocks in jaxtok.nn: every projection in attention and MLP is bias-free,
the pre-norm LayerNorm has no affine parameters (eps 1e-5, computed in float32), queries and keys are
normalised per head by the same no-affine LayerNorm (QK-norm), the attention scale is the muP one,
8 / head_dim (equal to 1/sqrt(64) only at head_dim 64), and the MLP is SwiGLU with the release's hidden
size int(2 * int(mlp_ratio * width) / 3). Weights are xavier-uniform, biases zero; adaLN modulation
layers are zero-initialised (adaLN-zero), with the release's chunk order
(gate_msa, gate_mlp, shift_msa, scale_msa, shift_mlp, scale_mlp) and one set of modulations per
sub-sequence (patches and registers are modulated separately).

Dimension names: B batch, T sequence (N patches + K registers), W width, H heads, E head dim,
S segments of the sequence (adaLN expansion).
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok.sharding import logical_init

XAVIER = nnx.initializers.xavier_uniform()
ZEROS = nnx.initializers.zeros_init()
LN_EPS = 1e-5


def layer_norm(x: jax.Array, eps: float = LN_EPS) -> jax.Array:
  """LayerNorm over the last axis without scale or bias, in float32; returns x's dtype."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """adaLN modulation x * (1 + scale) + shift."""
  return x * (1.0 + scale) + shift


def swiglu_hidden(width: int, mlp_ratio: float) -> int:
  """The release's SwiGLU hidden size: int(2 * int(width * mlp_ratio) / 3) (3072 for width 1152)."""
  return int(2 * int(width * mlp_ratio) / 3)


def register_mask(num_patches: int, num_registers: int) -> jax.Array:
  """FlexTok's encoder mask ("causal_last"): bool [T, T], T = N + K, True = may attend.

  Patches (positions < N) attend to all patches and to no register; register i (position N + i)
  attends to all patches and to registers j <= i. So the first k registers never see later ones.
  """
  t = num_patches + num_registers
  q = np.arange(t)[:, None]
  k = np.arange(t)[None, :]
  return jnp.asarray((k < num_patches) | ((q >= num_patches) & (k <= q)))


def sincos_2d(rows: int, cols: int, dim: int, temperature: float = 10000.0) -> jax.Array:
  """The release's 2D sin-cos position embedding, float32 [rows, cols, dim].

  Channels are [sin(r w), cos(r w), sin(c w), cos(c w)] with w_k = temperature^(-k / (dim/4)), r the
  row and c the column. (The release builds its table from `meshgrid(grid_w, grid_h, indexing="ij")`
  and reads it back as "(h w)", so the half it calls "w" holds the row index; this reproduces that on
  its square tables, which it crops to the input size.)
  """
  if dim % 4:
    raise ValueError(f"dim must be divisible by 4 for the 2D sin-cos embedding, got {dim}")
  omega = 1.0 / temperature ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
  r = np.arange(rows, dtype=np.float64)[:, None, None] * omega
  c = np.arange(cols, dtype=np.float64)[None, :, None] * omega
  r = np.broadcast_to(r, (rows, cols, dim // 4))
  c = np.broadcast_to(c, (rows, cols, dim // 4))
  emb = np.concatenate([np.sin(r), np.cos(r), np.sin(c), np.cos(c)], axis=-1)
  return jnp.asarray(emb, jnp.float32)


def timestep_frequencies(t: jax.Array, dim: int = 256, *, max_timestep: float = 1.0,
                         max_period: float = 256.0) -> jax.Array:
  """The release's sinusoidal time features, float32 [B, dim] for t [B] in [0, max_timestep].

  Frequencies are (1000 / max_timestep) * exp(-log(max_period) * k / (dim/2)) (max_period 256, not
  DiT's 10000), features [cos(t f), sin(t f)], zero-padded when dim is odd.
  """
  half = dim // 2
  freqs = (1000.0 / max_timestep) * jnp.exp(
      -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


def _linear(din, dout, names, *, bias, init=XAVIER, dtype, rngs):
  return nnx.Linear(din, dout, use_bias=bias, dtype=dtype, kernel_init=logical_init(init, *names),
                    bias_init=logical_init(ZEROS, names[1]), rngs=rngs)


class TimestepEmbedder(nnx.Module):
  """DiT-style time embedding MLP(freq_dim -> W -> W) over `timestep_frequencies`; xavier, zero bias."""

  def __init__(self, width: int, *, freq_dim: int = 256, max_timestep: float = 1.0,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.freq_dim, self.max_timestep = freq_dim, max_timestep
    self.fc1 = _linear(freq_dim, width, ("kv", "embed"), bias=True, dtype=dtype, rngs=rngs)
    self.fc2 = _linear(width, width, ("mlp", "embed"), bias=True, dtype=dtype, rngs=rngs)

  def __call__(self, t: jax.Array) -> jax.Array:
    """t [B] float in [0, max_timestep] -> [B, W]."""
    f = timestep_frequencies(t, self.freq_dim, max_timestep=self.max_timestep)
    return self.fc2(jax.nn.silu(self.fc1(f)))


class SwiGLU(nnx.Module):
  """fc2(silu(fc1 x) * fc3 x), bias-free (the release's `GatedMlp`)."""

  def __init__(self, width: int, hidden: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.fc1 = _linear(width, hidden, ("embed", "mlp"), bias=False, dtype=dtype, rngs=rngs)
    self.fc3 = _linear(width, hidden, ("embed", "mlp"), bias=False, dtype=dtype, rngs=rngs)
    self.fc2 = _linear(hidden, width, ("mlp", "embed"), bias=False, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.silu(self.fc1(x)) * self.fc3(x))


class Attention(nnx.Module):
  """Multi-head self-attention: bias-free wq/wk/wv/proj, no-affine QK LayerNorm, scale 8/head_dim."""

  def __init__(self, width: int, head_dim: int = 64, *, dtype=jnp.float32, rngs: nnx.Rngs):
    if width % head_dim:
      raise ValueError(f"width must be divisible by head_dim, got width={width}, head_dim={head_dim}")
    self.heads, self.head_dim = width // head_dim, head_dim
    self.scale = 8.0 / head_dim
    self.wq = _linear(width, width, ("embed", "heads"), bias=False, dtype=dtype, rngs=rngs)
    self.wk = _linear(width, width, ("embed", "heads"), bias=False, dtype=dtype, rngs=rngs)
    self.wv = _linear(width, width, ("embed", "heads"), bias=False, dtype=dtype, rngs=rngs)
    self.proj = _linear(width, width, ("heads", "embed"), bias=False, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """x [B, T, W]; mask bool [T, T] or [B, 1, T, T] (True = attend) or None. Returns [B, T, W]."""
    b, t, _ = x.shape
    split = lambda y: y.reshape(b, t, self.heads, self.head_dim)
    q, k, v = split(self.wq(x)), split(self.wk(x)), split(self.wv(x))
    q, k = layer_norm(q), layer_norm(k)
    # Scores and softmax in float32 whatever the compute dtype.
    s = jnp.einsum("bthe,bshe->bhts", q, k, preferred_element_type=jnp.float32) * self.scale
    if mask is not None:
      s = jnp.where(mask, s, jnp.finfo(jnp.float32).min)
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    o = jnp.einsum("bhts,bshe->bthe", p, v).reshape(b, t, -1)
    return self.proj(o)


class Block(nnx.Module):
  """Pre-norm block x + attn(ln(x)), x + mlp(ln(x)) (the release's `FlexBlock`)."""

  def __init__(self, width: int, head_dim: int = 64, mlp_ratio: float = 4.0, *, dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.attn = Attention(width, head_dim, dtype=dtype, rngs=rngs)
    self.mlp = SwiGLU(width, swiglu_hidden(width, mlp_ratio), dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    x = x + self.attn(layer_norm(x), mask)
    return x + self.mlp(layer_norm(x))


def expand_segments(emb: jax.Array, segments: Sequence[int]) -> jax.Array:
  """Per-segment vectors emb [B, S, M] repeated to the sequence: [B, sum(segments), M]."""
  return jnp.repeat(emb, np.asarray(segments), axis=1, total_repeat_length=int(sum(segments)))


class AdaLNBlock(Block):
  """adaLN-zero block (the release's `FlexBlockAdaLN`): each of the S segments of the sequence gets its
  own (gate_msa, gate_mlp, shift_msa, scale_msa, shift_mlp, scale_mlp) from one Linear(W -> S*6*W)
  of silu(cond), zero-initialised so that a fresh block is the identity."""

  def __init__(self, width: int, head_dim: int = 64, mlp_ratio: float = 4.0, *, expansion: int = 1,
               dtype=jnp.float32, rngs: nnx.Rngs):
    super().__init__(width, head_dim, mlp_ratio, dtype=dtype, rngs=rngs)
    self.expansion = expansion
    self.ada = _linear(width, expansion * 6 * width, ("embed", "mlp"), bias=True, init=ZEROS,
                       dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, cond: jax.Array, segments: Sequence[int],
               mask: jax.Array | None = None) -> jax.Array:
    """x [B, T, W], cond [B, W], segments: S static lengths summing to T."""
    if len(segments) != self.expansion or sum(segments) != x.shape[1]:
      raise ValueError(f"segments must be {self.expansion} lengths summing to the sequence length "
                       f"{x.shape[1]}, got {tuple(segments)}")
    b, _, w = x.shape
    mod = self.ada(jax.nn.silu(cond)).reshape(b, self.expansion, 6 * w)
    mod = expand_segments(mod, segments)
    g_msa, g_mlp, sh_msa, sc_msa, sh_mlp, sc_mlp = jnp.split(mod, 6, axis=-1)
    x = x + g_msa * self.attn(modulate(layer_norm(x), sh_msa, sc_msa), mask)
    return x + g_mlp * self.mlp(modulate(layer_norm(x), sh_mlp, sc_mlp))
