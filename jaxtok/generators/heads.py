"""Per-token heads for continuous and dimension-wise tokens.

`FlowHead` is MAR's small per-token denoising MLP (residual blocks modulated by adaLN from the sum of
the time embedding and the transformer's condition vector z), trained here with the rectified-flow
objective used by FlowAR/xAR rather than MAR's DDPM: x_t = (1 - t) x + t eps, target velocity
v = eps - x, so t = 1 is noise and t = 0 is data; sampling integrates dx/dt = v from t = 1 to t = 0
(`jaxtok.samplers.flow`). Step counts can therefore be annealed over generation (DiSA).

`DimwiseARHead` is TokenBridge's channel autoregressive head: for one spatial position with condition
z, the D dimension-wise tokens are generated one channel after another by a small causal transformer
whose first input is the projected condition and whose later inputs are the previous channels' token
embeddings (a separate embedding table and output head per channel, realised as one table/head of
D * levels entries, each channel using its own slice). Channel order is a fixed permutation.

Dimension names: N tokens (rows), D token dimension / channels, W condition width, V levels per channel.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.generators.trunk import TokenTrunk
from jaxtok.nn.embeddings import timestep_embedding
from jaxtok.sharding import logical_init

_INIT = nnx.initializers.xavier_uniform()


class _ResBlock(nnx.Module):
  """x + gate * mlp(modulate(norm(x), shift, scale)), with (shift, scale, gate) from the condition."""

  def __init__(self, width: int, *, rngs: nnx.Rngs):
    self.norm = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
    self.fc1 = nnx.Linear(width, width, kernel_init=logical_init(_INIT, "embed", "mlp"), rngs=rngs)
    self.fc2 = nnx.Linear(width, width, kernel_init=logical_init(_INIT, "mlp", "embed"), rngs=rngs)
    # Zero-initialised modulation: every block starts as the identity (adaLN-Zero).
    self.ada = nnx.Linear(width, 3 * width, kernel_init=logical_init(nnx.initializers.zeros, "embed", "mlp"),
                          rngs=rngs)

  def __call__(self, x, c):
    shift, scale, gate = jnp.split(self.ada(jax.nn.silu(c)), 3, axis=-1)
    h = self.norm(x) * (1 + scale) + shift
    return x + gate * self.fc2(jax.nn.silu(self.fc1(h)))


class FlowHead(nnx.Module):
  """MAR-style per-token velocity MLP v(x_t, t, z) for continuous tokens of dimension `token_dim`."""

  def __init__(self, *, token_dim: int, cond_dim: int, width: int = 1024, depth: int = 3,
               rngs: nnx.Rngs):
    if token_dim < 1 or cond_dim < 1 or width < 2 or depth < 1:
      raise ValueError(f"need token_dim, cond_dim, depth >= 1 and width >= 2, got {token_dim}, "
                       f"{cond_dim}, {depth}, {width}")
    self.token_dim, self.width = token_dim, width
    self.inp = nnx.Linear(token_dim, width, kernel_init=logical_init(_INIT, None, "embed"), rngs=rngs)
    self.time = nnx.Linear(width, width, kernel_init=logical_init(_INIT, None, "embed"), rngs=rngs)
    self.cond = nnx.Linear(cond_dim, width, kernel_init=logical_init(_INIT, None, "embed"), rngs=rngs)
    self.blocks = nnx.List([_ResBlock(width, rngs=rngs) for _ in range(depth)])
    self.final_norm = nnx.LayerNorm(width, epsilon=1e-6, use_scale=False, use_bias=False, rngs=rngs)
    self.final_ada = nnx.Linear(width, 2 * width,
                                kernel_init=logical_init(nnx.initializers.zeros, "embed", "mlp"), rngs=rngs)
    self.out = nnx.Linear(width, token_dim, kernel_init=logical_init(nnx.initializers.zeros, "embed", None),
                          rngs=rngs)

  def __call__(self, x_t: jax.Array, t: jax.Array, z: jax.Array) -> jax.Array:
    """Velocity [N, D] float32 for noisy tokens x_t [N, D], times t [N] and conditions z [N, W]."""
    c = self.time(timestep_embedding(t, self.width)) + self.cond(z.astype(jnp.float32))
    h = self.inp(x_t.astype(jnp.float32))
    for block in self.blocks:
      h = block(h, c)
    shift, scale = jnp.split(self.final_ada(jax.nn.silu(c)), 2, axis=-1)
    return self.out(self.final_norm(h) * (1 + scale) + shift)


def flow_loss_per_row(head: FlowHead, x: jax.Array, z: jax.Array, rng: jax.Array, *,
                      batch_mul: int = 4, time_sampling: str = "uniform") -> jax.Array:
  """Rectified-flow loss per token [N] of the head on clean tokens x [N, D] with conditions z [N, W].

  Each token is repeated `batch_mul` times with independent noise and times (MAR's diffusion batch
  multiplier); the loss of a row is its mean squared velocity error over dimensions and repeats.
  time_sampling: "uniform" (t ~ U(0,1)) or "logit_normal" (t = sigmoid(n), n ~ N(0,1)).
  """
  if time_sampling not in ("uniform", "logit_normal"):
    raise ValueError(f"time_sampling must be 'uniform' or 'logit_normal', got {time_sampling!r}")
  n = x.shape[0]
  xr = jnp.repeat(x.astype(jnp.float32), batch_mul, axis=0)
  zr = jnp.repeat(z, batch_mul, axis=0)
  rt, rn = jax.random.split(rng)
  m = xr.shape[0]
  t = (jax.random.uniform(rt, (m,)) if time_sampling == "uniform"
       else jax.nn.sigmoid(jax.random.normal(rt, (m,))))
  eps = jax.random.normal(rn, xr.shape)
  x_t = (1 - t)[:, None] * xr + t[:, None] * eps
  err = jnp.mean((head(x_t, t, zr) - (eps - xr)) ** 2, axis=-1)
  return err.reshape(n, batch_mul).mean(-1)


def flow_loss(head: FlowHead, x: jax.Array, z: jax.Array, rng: jax.Array, *, batch_mul: int = 4,
              time_sampling: str = "uniform") -> jax.Array:
  """Mean of `flow_loss_per_row` over all tokens (float32 scalar)."""
  return jnp.mean(flow_loss_per_row(head, x, z, rng, batch_mul=batch_mul, time_sampling=time_sampling))


class DimwiseARHead(nnx.Module):
  """TokenBridge's channel-autoregressive head over D dimension-wise tokens with V levels each."""

  def __init__(self, *, num_channels: int, levels: int, cond_dim: int, width: int = 256,
               depth: int = 4, heads: int = 4, order: Sequence[int] | None = None, rngs: nnx.Rngs):
    if num_channels < 1 or levels < 2:
      raise ValueError(f"need num_channels >= 1 and levels >= 2, got {num_channels} and {levels}")
    order = tuple(range(num_channels)) if order is None else tuple(int(i) for i in order)
    if sorted(order) != list(range(num_channels)):
      raise ValueError(f"order must be a permutation of range({num_channels}), got {order}")
    self.num_channels, self.levels, self.order = num_channels, levels, order
    self.cond_proj = nnx.Linear(cond_dim, width, kernel_init=logical_init(_INIT, None, "embed"), rngs=rngs)
    self.net = TokenTrunk(input_vocab=num_channels * levels, output_vocab=num_channels * levels,
                          width=width, depth=depth, heads=heads, causal=True, rngs=rngs)

  def _inputs(self, z, ordered_tokens):
    """Embedded sequence [N, D, W]: projected condition, then tokens of channels 0..D-2 (in order)."""
    offsets = jnp.arange(self.num_channels - 1) * self.levels
    emb = self.net.embed(ordered_tokens[:, :-1] + offsets)
    return jnp.concatenate([self.cond_proj(z)[:, None].astype(emb.dtype), emb], axis=1)

  def _channel_logits(self, logits, position):
    """Slice of the shared head belonging to the channel generated at `position`: [..., V]."""
    return jax.lax.dynamic_slice_in_dim(logits, position * self.levels, self.levels, axis=-1)

  def __call__(self, z: jax.Array, tokens: jax.Array) -> jax.Array:
    """Teacher-forced logits [N, D, V] (in channel index order) for tokens [N, D] int32."""
    perm = jnp.asarray(self.order)
    ordered = tokens[:, perm].astype(jnp.int32)
    out = self.net.forward_embedded(self._inputs(z, ordered))  # [N, D, D*V]
    per = out.reshape(out.shape[0], self.num_channels, self.num_channels, self.levels)
    diag = per[:, jnp.arange(self.num_channels), jnp.arange(self.num_channels)]  # [N, D(ordered), V]
    return diag[:, jnp.argsort(perm)]

  def loss(self, z: jax.Array, tokens: jax.Array) -> jax.Array:
    """Mean cross-entropy over all channels."""
    logp = jax.nn.log_softmax(self(z, tokens), -1)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), -1))

  def sample(self, rng: jax.Array, z: jax.Array, *, temperature: float = 1.0) -> jax.Array:
    """Samples tokens [N, D] int32 channel by channel with a KV cache (temperature 0 = argmax).

    Categorical draws use jax.random.categorical(mode="high") so low-probability levels are not cut off.
    """
    if temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {temperature}")
    n, d = z.shape[0], self.num_channels
    cache = self.net.init_cache(n, d)

    def draw(key, logits):
      if temperature == 0:
        return jnp.argmax(logits, -1).astype(jnp.int32)
      return jax.random.categorical(key, logits / temperature, mode="high").astype(jnp.int32)

    logits, cache = self.net.extend_embedded(self.cond_proj(z)[:, None], 0, cache)
    keys = jax.random.split(rng, d)
    first = draw(keys[0], self._channel_logits(logits[:, 0], 0))

    def body(carry, i):
      prev, cache = carry
      x = self.net.embed(prev + (i - 1) * self.levels)[:, None]
      logits, cache = self.net.extend_embedded(x, i, cache)
      tok = draw(keys[i], self._channel_logits(logits[:, 0], i))
      return (tok, cache), tok

    (_, _), rest = jax.lax.scan(body, (first, cache), jnp.arange(1, d))
    ordered = jnp.concatenate([first[:, None], rest.T], axis=1)
    return ordered[:, jnp.argsort(jnp.asarray(self.order))]
