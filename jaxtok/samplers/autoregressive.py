"""Autoregressive token sampling with a preallocated cache carried through one lax.scan.

B: batch, P: prompt length, N: generated tokens, V: vocabulary.
Contract:
  ``prefill_fn(tokens int32 [B, P], cache) -> (logits [B, V] for position P, cache)``
  ``step_fn(token int32 [B], position int32 scalar, cache) -> (logits [B, V] for position+1, cache)``
  where ``position`` is the index of ``token`` in the sequence.
Step i draws its noise from ``fold_in(rng, i)`` in both samplers, so they agree token for token.
"""
import jax
import jax.numpy as jnp

from jaxtok.samplers import categorical


def _check(num_tokens):
  if num_tokens < 1:
    raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")


def sample(rng, prefill_fn, step_fn, cache, prompt_tokens, *, num_tokens,
           temperature=1.0, top_k=None):
  """Returns generated tokens int32 [B, N]."""
  _check(num_tokens)
  p = prompt_tokens.shape[1]
  logits, cache = prefill_fn(prompt_tokens, cache)

  def body(carry, i):
    logits, cache = carry
    tok = categorical.sample(jax.random.fold_in(rng, i), logits,
                             temperature=temperature, top_k=top_k)
    logits, cache = step_fn(tok, p + i, cache)
    return (logits, cache), tok

  return jax.lax.scan(body, (logits, cache), jnp.arange(num_tokens))[1].T


def sample_recompute(rng, logits_fn, prompt_tokens, *, num_tokens, temperature=1.0,
                     top_k=None):
  """Reference sampler: ``logits_fn(seq int32 [B, P+N], length) -> logits [B, V]`` for the
  token at ``length`` given ``seq[:, :length]`` (later entries are padding)."""
  _check(num_tokens)
  b, p = prompt_tokens.shape
  seq = jnp.concatenate([prompt_tokens, jnp.zeros((b, num_tokens), jnp.int32)], 1)

  def body(seq, i):
    logits = logits_fn(seq, p + i)
    tok = categorical.sample(jax.random.fold_in(rng, i), logits,
                             temperature=temperature, top_k=top_k)
    return seq.at[:, p + i].set(tok), None

  return jax.lax.scan(body, seq, jnp.arange(num_tokens))[0][:, p:]
