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
at 1/2).

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


def sample(rng: jax.Array, model: BinaryAR, labels: jax.Array, *, temperature: float = 1.0,
           cfg_scale: float = 0.0, guided: bool = False) -> jax.Array:
  """Bits int32 [B, N, n] for labels int32 [B] (-1: unconditional).

  cfg_scale: w of Instella's (1 + w) l_c - w l_u, used when `guided` (the null class as u).
  """
  _checks.temperature(temperature)
  b, n = labels.shape[0], model.seq_len
  cond = model.condition_ids(labels, b)
  ids = guidance.concat_batch(cond, jnp.full_like(cond, model.null_id)) if guided else cond
  cache = model.init_cache(ids.shape[0])

  def draw(key, logits):
    if guided:
      logits = guidance.cfg_instella(logits[:b], logits[b:], cfg_scale)
    logits = logits.astype(jnp.float32)
    if temperature == 0:
      return (logits > 0).astype(jnp.int32)
    return jax.random.bernoulli(key, jax.nn.sigmoid(logits / temperature)).astype(jnp.int32)

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
  u + s (c - u) convention = Instella's w = s - 1)."""
  guided = model.num_classes > 0 and float(opts.cfg_scale) != 1.0
  return sample(rng, model, labels, temperature=opts.temperature,
                cfg_scale=float(opts.cfg_scale) - 1.0, guided=guided)
