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
D * levels entries, each channel using its own slice). Channel order is a fixed permutation. With
adaln=True (TokenBridge's form, as the release's code) a per-step position embedding is added to the
inputs and the blocks and the final norm are modulated (adaLN-zero) by the projected condition plus
a learned per-step embedding; sampling draws with `samplers.categorical` and may apply
classifier-free guidance per channel.

Dimension names: N tokens (rows), D token dimension / channels, W condition width, V levels per channel.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.generators.trunk import TokenTrunk
from jaxtok.nn.block import Block
from jaxtok.nn.dense import Dense
from jaxtok.nn.norm import Norm
from jaxtok.nn.stack import Stack
from jaxtok.samplers import categorical, guidance
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
  """MAR-style per-token velocity MLP v(x_t, t, z) for continuous tokens of dimension `token_dim`.

  time_freq None: t enters as Linear(timestep_embedding(t, width)). time_freq F: MAR's / DiT's
  TimestepEmbedder, Linear(F, width), SiLU, Linear(width, width) (`time`, `time_out`) on an F-dim
  embedding (MaskGen-KL's DDPM head: F = 256). time_scale multiplies t in the embedding (1000 for
  t in [0, 1]; 1 for integer DDPM steps). out_dim: the output width (default token_dim; a DDPM
  head with learned variance has 2 token_dim: eps | variance value).
  """

  def __init__(self, *, token_dim: int, cond_dim: int, width: int = 1024, depth: int = 3,
               time_freq: int | None = None, time_scale: float = 1000.0,
               out_dim: int | None = None, rngs: nnx.Rngs):
    if token_dim < 1 or cond_dim < 1 or width < 2 or depth < 1:
      raise ValueError(f"need token_dim, cond_dim, depth >= 1 and width >= 2, got {token_dim}, "
                       f"{cond_dim}, {depth}, {width}")
    if (time_freq is not None and time_freq < 2) or (out_dim is not None and out_dim < 1):
      raise ValueError(f"time_freq must be None or >= 2 and out_dim None or >= 1, got "
                       f"{time_freq}, {out_dim}")
    self.token_dim, self.width, self.time_freq = token_dim, width, time_freq
    self.time_scale = float(time_scale)
    self.inp = nnx.Linear(token_dim, width, kernel_init=logical_init(_INIT, None, "embed"), rngs=rngs)
    time_init = _INIT if time_freq is None else nnx.initializers.normal(0.02)
    self.time = nnx.Linear(time_freq or width, width, kernel_init=logical_init(time_init, None, "embed"),
                           rngs=rngs)
    self.cond = nnx.Linear(cond_dim, width, kernel_init=logical_init(_INIT, None, "embed"), rngs=rngs)
    self.blocks = nnx.List([_ResBlock(width, rngs=rngs) for _ in range(depth)])
    self.final_norm = nnx.LayerNorm(width, epsilon=1e-6, use_scale=False, use_bias=False, rngs=rngs)
    self.final_ada = nnx.Linear(width, 2 * width,
                                kernel_init=logical_init(nnx.initializers.zeros, "embed", "mlp"), rngs=rngs)
    self.out = nnx.Linear(width, out_dim or token_dim,
                          kernel_init=logical_init(nnx.initializers.zeros, "embed", None), rngs=rngs)
    # Created last so that the default head draws its initial weights exactly as before.
    self.time_out = None if time_freq is None else nnx.Linear(
        width, width, kernel_init=logical_init(nnx.initializers.normal(0.02), "embed", "mlp"), rngs=rngs)

  def __call__(self, x_t: jax.Array, t: jax.Array, z: jax.Array) -> jax.Array:
    """Velocity [N, D] (or [N, out_dim]) float32 for noisy tokens x_t [N, D], times t [N] and
    conditions z [N, W]."""
    c = self.time(timestep_embedding(t, self.time_freq or self.width, scale=self.time_scale))
    if self.time_out is not None:
      c = self.time_out(jax.nn.silu(c))
    c = c + self.cond(z.astype(jnp.float32))
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
  """TokenBridge's channel-autoregressive head over D dimension-wise tokens with V levels each.

  Both forms open the sequence with c = cond_proj(z) [N, W] and feed the previous channels' token
  embeddings after it (a table per channel, as D * V rows). Channel k of the order is predicted at
  step k from steps 0..k (causal).

  adaln=False: a causal `TokenTrunk` (RoPE, RMSNorm) over that sequence.
  adaln=True (TokenBridge's head, checked against the release `models/tokenbridge.py`
  `forward_channel_ar`): x_k = input_k + pos[k] (`channel_embed`); every pre-LayerNorm `Block`
  (eps 1e-6, qkv bias, timm's affine LayerNorm qk-norm, GELU MLP of 4 W, causal) is adaLN-zero
  modulated by the per-step condition a_k = c + step_cond[k] (`timesteps_embeddings`), which lives
  in the head's width W, not the backbone's; then an affine LayerNorm (`channel_norm`) and the
  release's `FinalLayer`: a non-affine LayerNorm modulated by (scale, shift) = final_ada(silu(a_k))
  (zero-initialised; scale first, as the release splits it), and the per-channel output layer.
  The first input is c itself: the release's training path adds no start vector (its sampling path
  adds step_cond[0] to it, which its training never saw; we keep training and sampling identical).
  Not reproduced: the release's attention/projection dropout (0.1) inside the head.
  """

  def __init__(self, *, num_channels: int, levels: int, cond_dim: int, width: int = 256,
               depth: int = 4, heads: int = 4, order: Sequence[int] | None = None,
               adaln: bool = False, rngs: nnx.Rngs):
    if num_channels < 1 or levels < 2:
      raise ValueError(f"need num_channels >= 1 and levels >= 2, got {num_channels} and {levels}")
    order = tuple(range(num_channels)) if order is None else tuple(int(i) for i in order)
    if sorted(order) != list(range(num_channels)):
      raise ValueError(f"order must be a permutation of range({num_channels}), got {order}")
    self.num_channels, self.levels, self.order, self.adaln = num_channels, levels, order, adaln
    self.cond_proj = nnx.Linear(cond_dim, width, kernel_init=logical_init(_INIT, None, "embed"), rngs=rngs)
    vocab = num_channels * levels
    if not adaln:
      self.net = TokenTrunk(input_vocab=vocab, output_vocab=vocab, width=width, depth=depth,
                            heads=heads, causal=True, rngs=rngs)
      return
    init = nnx.initializers.normal(0.02)
    self.embed = nnx.Embed(vocab, width, embedding_init=logical_init(init, "vocab", "embed"), rngs=rngs)
    self.pos = nnx.Param(logical_init(init, None, "embed")(rngs.params(), (num_channels, width)))
    self.step_cond = nnx.Param(logical_init(init, None, "embed")(rngs.params(),
                                                                 (num_channels, width)))
    self.blocks = Stack(depth, lambda r: Block(
        width, heads, mlp_hidden=4 * width, norm="layer", norm_eps=1e-6, adaln=True,
        cond_dim=width, qk_norm="layer", qk_norm_eps=1e-6, qk_norm_affine=True, qk_norm_bias=True,
        rngs=r), rngs=rngs)
    self.norm = Norm(width, kind="layer", eps=1e-6, rngs=rngs)
    self.final_norm = Norm(width, kind="layer", eps=1e-6, affine=False, rngs=rngs)
    self.final_ada = Dense(width, 2 * width, ("embed", "mlp"), kernel_init=nnx.initializers.zeros,
                           rngs=rngs)
    self.out = Dense(width, vocab, ("embed", "vocab"), kernel_init=init, rngs=rngs)

  def _embed(self, ids):
    return (self.embed if self.adaln else self.net.embed)(ids)

  def _project(self, z):
    """c = cond_proj(z): [N, W] float32; the sequence's first input and the adaLN base."""
    return self.cond_proj(z.astype(jnp.float32))

  def _step_cond(self, c, i=None):
    """adaLN conditions a [N, D, W] (all steps) or [N, 1, W] (step i, may be traced)."""
    table = self.step_cond.get_value()
    if i is not None:
      table = jax.lax.dynamic_slice_in_dim(table, i, 1, axis=0)
    return c[:, None] + table

  def _logits(self, h, a):
    """All channels' logits [N, T, D*V] float32 of features h [N, T, W] under conditions a [N, T, W]."""
    scale, shift = jnp.split(self.final_ada(jax.nn.silu(a)), 2, axis=-1)
    h = self.final_norm(self.norm(h)) * (1 + scale) + shift
    return self.out(h).astype(jnp.float32)

  def _inputs(self, c, ordered_tokens):
    """Embedded sequence [N, D, W]: c, then tokens of channels 0..D-2 (in order)."""
    offsets = jnp.arange(self.num_channels - 1) * self.levels
    emb = self._embed(ordered_tokens[:, :-1] + offsets)
    x = jnp.concatenate([c[:, None].astype(emb.dtype), emb], axis=1)
    return x + self.pos.get_value() if self.adaln else x

  def _forward(self, c, x):
    """Teacher-forced logits [N, D, D*V] of the embedded sequence x [N, D, W]."""
    if not self.adaln:
      return self.net.forward_embedded(x)
    a = self._step_cond(c)
    return self._logits(self.blocks(x, causal=True, cond=a), a)

  def _extend(self, c, x, i, cache):
    """Logits [N, 1, D*V] of one embedded input x [N, 1, W] at step i, and the new cache."""
    if not self.adaln:
      return self.net.extend_embedded(x, i, cache)
    x = x + jax.lax.dynamic_slice_in_dim(self.pos.get_value(), i, 1, axis=0)
    a = self._step_cond(c, i)
    h, cache = self.blocks.extend(x, cache, i, cond=a)
    return self._logits(h, a), cache

  def _init_cache(self, n):
    return (self.blocks if self.adaln else self.net).init_cache(n, self.num_channels)

  def _channel_logits(self, logits, position):
    """Slice of the shared head belonging to the channel generated at `position`: [..., V]."""
    return jax.lax.dynamic_slice_in_dim(logits, position * self.levels, self.levels, axis=-1)

  def __call__(self, z: jax.Array, tokens: jax.Array) -> jax.Array:
    """Teacher-forced logits [N, D, V] (in channel index order) for tokens [N, D] int32."""
    perm = jnp.asarray(self.order)
    ordered = tokens[:, perm].astype(jnp.int32)
    c = self._project(z)
    out = self._forward(c, self._inputs(c, ordered))  # [N, D, D*V]
    per = out.reshape(out.shape[0], self.num_channels, self.num_channels, self.levels)
    diag = per[:, jnp.arange(self.num_channels), jnp.arange(self.num_channels)]  # [N, D(ordered), V]
    return diag[:, jnp.argsort(perm)]

  def loss(self, z: jax.Array, tokens: jax.Array) -> jax.Array:
    """Mean cross-entropy over all channels."""
    logp = jax.nn.log_softmax(self(z, tokens), -1)
    return -jnp.mean(jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), -1))

  def sample(self, rng: jax.Array, z: jax.Array, *, temperature: float = 1.0, top_k=None,
             top_p=None, z_uncond: jax.Array | None = None, cfg_scale=1.0) -> jax.Array:
    """Samples tokens [N, D] int32 channel by channel with a KV cache (temperature 0 = argmax).

    Draws use `samplers.categorical.sample` (temperature, top-k, top-p, full-precision tails).
    Guidance: with z_uncond [N, W] both conditions run as one batch of 2N rows; each channel's
    logits are combined as u + s (c - u) (`guidance.cfg_uncond_base`, s = cfg_scale, which may be
    traced) and the one drawn token is fed back to both halves. (TokenBridge's release guides the
    backbone features instead and samples the head once: `tokenbridge.sample_head`.)
    """
    n, d = z.shape[0], self.num_channels
    categorical.check_args(self.levels, temperature=temperature, top_k=top_k, top_p=top_p)
    guided = z_uncond is not None
    cc = self._project(jnp.concatenate([z, z_uncond], 0) if guided else z)
    cache = self._init_cache(cc.shape[0])
    keys = jax.random.split(rng, d)

    def draw(key, logits, i):
      logits = self._channel_logits(logits[:, 0], i)
      if guided:
        logits = guidance.cfg_uncond_base(logits[:n], logits[n:], cfg_scale)
      return categorical.sample(key, logits, temperature=temperature, top_k=top_k, top_p=top_p)

    logits, cache = self._extend(cc, cc[:, None], 0, cache)
    first = draw(keys[0], logits, 0)

    def body(carry, i):
      prev, cache = carry
      both = jnp.concatenate([prev, prev]) if guided else prev
      x = self._embed(both + (i - 1) * self.levels)[:, None]
      logits, cache = self._extend(cc, x, i, cache)
      tok = draw(keys[i], logits, i)
      return (tok, cache), tok

    (_, _), rest = jax.lax.scan(body, (first, cache), jnp.arange(1, d))
    ordered = jnp.concatenate([first[:, None], rest.T], axis=1)
    return ordered[:, jnp.argsort(jnp.asarray(self.order))]
