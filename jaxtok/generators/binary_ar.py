"""Autoregressive generation of bit-vector tokens, Instella-T2I's AR generator.

Tokens are bits int32 [B, N, n] in {0, 1}. A causal `TokenTrunk` reads [class, bits_1, ...,
bits_{N-1}] (each token's bits through Linear(n, W) plus a learned position embedding; the class
token plays the release's start token) and outputs n logits per position: the n bits of the next
token are independent Bernoullis given the causal context, P(bits_i | bits_<i) = prod_j
sigmoid(+-l_ij), as in the release (`BinaryAR.sample` draws every bit of a token from its own
sigmoid, without conditioning one bit on another). The loss is the mean binary cross-entropy over all
bits. A token therefore carries correlations between its bits only through earlier tokens.

Sampling (`sample`, one jit): prefill the class token into the trunk's preallocated KV cache, then
one cached `extend` per token (N model calls); guidance is Instella's (1 + w) l_c - w l_u on the
logits (`guidance.cfg_instella`) over a doubled batch, temperature divides the logits (0: threshold
at 1/2). `delta` (the release's `BinaryAR.sample(delta=...)`, default 0) biases each bit j > 0 of a
token toward the opposite of bit j - 1 of the same token: its logit (after guidance and temperature)
gains +delta when bit j - 1 is 0 and -delta when it is 1, so the bits are then drawn one after
another within a token (`draw_bits`).

Checked against the release (Instella-T2I `models/ar_model.py`, `scripts/train_ar.py`,
`test_ar.py`, vendored in sprintml/BitMark):
  - loss: BCE with logits of all bits of tokens 1..N given [start, tokens 1..N-1]: same.
  - sampling: every bit of a token from its own sigmoid, temperature dividing the logits before
    guidance (equal to after: guidance is linear), (1 + w) c - w u with w = 7.5 in test_ar.py,
    temperature 0 thresholding: same. The `delta` bit bias was missing; added (default 0 as in the
    release).
  - network (not matched, documented): the release's blocks are pre-RMSNorm causal attention
    (q/k RMS-normed) whose keys also include a per-layer projection of one AMD-OLMo-1B hidden state
    (text prefix, masked by the text's padding), a learned position embedding added to the normed
    input of every block, a GELU-tanh FeedForward, a learned split (start) token and an RMSNorm +
    Linear head. Here: the class token as the start token and the library's `TokenTrunk` with one
    position embedding at the input. OLMo conversion is out of scope.

Dimension names: B batch, N tokens, n bits, W width.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.generators.binary_diffusion import FIELDS, BitModel, bce_with_logits, check_bits
from jaxtok.nn.options import model_kwargs
from jaxtok.samplers import _checks, guidance


class BinaryAR(BitModel):
  """Causal bit-token model (see the module docstring)."""

  def __init__(self, *, rngs: nnx.Rngs, **kw):
    super().__init__(causal=True, rngs=rngs, **kw)

  def __call__(self, bits: jax.Array, labels=None, *, train: bool = False, rng=None) -> jax.Array:
    """Teacher-forced logits [B, N, n] float32 for bits int [B, N, n], one pass."""
    check_bits(bits, self.seq_len, self.num_bits)
    b = bits.shape[0]
    cond = self.net.embed(self.condition_ids(labels, b, train=train, rng=rng))
    x = self.embed_bits(bits[:, :-1])
    x = jnp.concatenate([cond[:, None].astype(x.dtype), x], axis=1)
    return self.net.forward_embedded(x)

  def init_cache(self, batch: int, dtype=None):
    """A cache of seq_len slots (the class token and N - 1 tokens)."""
    return self.net.init_cache(batch, self.seq_len, dtype)

  def prefill(self, cond_ids: jax.Array, cache):
    """Writes class ids [B] at slot 0; returns (logits [B, n] of token 0, cache)."""
    logits, cache = self.net.extend_embedded(self.net.embed(cond_ids)[:, None], 0, cache)
    return logits[:, 0], cache

  def step(self, bits: jax.Array, position, cache):
    """Writes token position-1's bits [B, n] at slot `position` (int32, may be traced); returns
    (logits [B, n] of token `position`, cache)."""
    x = self.embed_bits(bits[:, None], position - 1)
    logits, cache = self.net.extend_embedded(x, position, cache)
    return logits[:, 0], cache


def loss(model: BinaryAR, tokens: jax.Array, labels, *, rng: jax.Array, train: bool = True,
         step=None):
  """Mean binary cross-entropy of every bit given the earlier tokens; metrics {loss, accuracy}.
  `step` is unused."""
  del step
  logits = model(tokens, labels, train=train, rng=rng)
  value = jnp.mean(bce_with_logits(logits, tokens.astype(jnp.float32)))
  acc = jnp.mean(((logits > 0) == (tokens > 0)).astype(jnp.float32))
  return value, {"loss": value, "accuracy": acc}


def draw_bits(key: jax.Array, logits: jax.Array, *, temperature: float = 1.0,
              delta: float = 0.0) -> jax.Array:
  """The bits int32 [B, n] of one token from its logits [B, n] (already guided).

  logits / temperature, then bit j > 0 gains +delta if bit j - 1 is 0, -delta if it is 1 (the
  release's bias; delta = 0: independent bits); each bit ~ Bernoulli(sigmoid(.)), or thresholded at
  1/2 when temperature == 0.
  """
  logits = logits.astype(jnp.float32)
  greedy = temperature == 0
  scaled = logits if greedy else logits / temperature
  if delta == 0:
    if greedy:
      return (scaled > 0).astype(jnp.int32)
    return jax.random.bernoulli(key, jax.nn.sigmoid(scaled)).astype(jnp.int32)
  u = jax.random.uniform(key, scaled.shape)

  def one(prev, xs):
    logit, uj = xs
    logit = logit + jnp.where(prev == 0, delta, -delta)
    p = jax.nn.sigmoid(logit)
    bit = (p > 0.5) if greedy else (uj < p)
    return bit.astype(jnp.int32), bit.astype(jnp.int32)

  # Bit 0 has no previous bit in its token: no bias.
  first = (scaled[:, 0] > 0) if greedy else (u[:, 0] < jax.nn.sigmoid(scaled[:, 0]))
  first = first.astype(jnp.int32)
  _, rest = jax.lax.scan(one, first, (scaled[:, 1:].T, u[:, 1:].T))
  return jnp.concatenate([first[:, None], rest.T], axis=1)


def sample(rng: jax.Array, model: BinaryAR, labels: jax.Array, *, temperature: float = 1.0,
           cfg_scale: float = 0.0, guided: bool = False, delta: float = 0.0) -> jax.Array:
  """Bits int32 [B, N, n] for labels int32 [B] (-1: unconditional).

  cfg_scale: w of Instella's (1 + w) l_c - w l_u, used when `guided` (the null class as u).
  delta: the release's within-token bit bias (`draw_bits`; 0 = independent bits).
  """
  _checks.temperature(temperature)
  if isinstance(delta, bool) or not isinstance(delta, (int, float)):
    raise TypeError(f"delta must be a real number, got {type(delta).__name__} ({delta!r})")
  b, n = labels.shape[0], model.seq_len
  cond = model.condition_ids(labels, b)
  ids = guidance.concat_batch(cond, jnp.full_like(cond, model.null_id)) if guided else cond
  cache = model.init_cache(ids.shape[0])

  def draw(key, logits):
    if guided:
      logits = guidance.cfg_instella(logits[:b], logits[b:], cfg_scale)
    return draw_bits(key, logits, temperature=temperature, delta=delta)

  def feed(bits):
    return jnp.concatenate([bits, bits]) if guided else bits

  keys = jax.random.split(rng, n)
  logits, cache = model.prefill(ids, cache)
  first = draw(keys[0], logits)
  out = jnp.zeros((b, n, model.num_bits), jnp.int32).at[:, 0].set(first)

  def body(i, carry):
    out, prev, cache = carry
    logits, cache = model.step(feed(prev), i, cache)
    bits = draw(keys[i], logits)
    return out.at[:, i].set(bits), bits, cache

  out, _, _ = jax.lax.fori_loop(1, n, body, (out, first, cache))
  return out


def make_model(cfg: Mapping, *, rngs: nnx.Rngs) -> BinaryAR:
  """A BinaryAR from its constructor's fields plus `nn.options.COMMON` and `name`; any other key
  raises ValueError."""
  return BinaryAR(**model_kwargs(cfg, FIELDS, model="binary_ar", cls=BitModel), rngs=rngs)


def generate(model: BinaryAR, rng: jax.Array, labels: jax.Array, opts) -> jax.Array:
  """The generate dispatch's entry (opts: `eval.generate.Options`; cfg_scale s in the library's
  u + s (c - u) convention = Instella's w = s - 1; opts.bit_delta: the release's `delta`,
  `config.sampling.bit_delta`)."""
  guided = model.num_classes > 0 and float(opts.cfg_scale) != 1.0
  return sample(rng, model, labels, temperature=opts.temperature,
                cfg_scale=float(opts.cfg_scale) - 1.0, guided=guided, delta=opts.bit_delta)
