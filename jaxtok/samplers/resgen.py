"""ResGen's sampler (the reverse of the depth-wise masking process), one jit, `lax.fori_loop`.

Start with every (position, level) pair of the [B, N, Q] token array masked. Step s (0-based, S
steps):
  1. the model gives, per position, a mixture of Gaussians over the code space (`predict_fn`);
  2. one vector is drawn per position (`generators.resgen.mog_sample`, temperature scaling the
     standard deviations) and re-quantised over that position's masked levels
     (`generators.resgen.requantize`): candidate tokens for every masked pair;
  3. n_{s+1} pairs stay masked (`schedules.mask_counts(schedule, N Q, S)`, MaskGIT's gamma; 0 after
     the last step), chosen depth-wise (`generators.resgen.depthwise_mask`): deepest levels first, and
     within the partly masked level the positions with more masked levels, then the least confident
     ones. Confidence is the log-density of the drawn vector under the predicted mixture plus
     MaskGIT's annealed Gumbel noise, choice_temperature (1 - (s + 1) / S) g. Ordering by the number
     of masked levels first makes the new mask a subset of the old one (a revealed token is never
     masked again) while keeping every position's masked levels a suffix.
The revealed candidates are kept. S model calls in all (no guidance: the paper's guidance is not
implemented here).

Dimension names: B batch, N positions, Q levels, C codes, E code dimension, M mixture components.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxtok.generators import resgen as rg
from jaxtok.samplers import _checks, categorical, schedules


def sample(rng: jax.Array, predict_fn: Callable, table: jax.Array, *, batch: int, seq_len: int,
           steps: int, schedule: str = "cosine", temperature: float = 1.0,
           choice_temperature: float = 4.5, cond: Any = None) -> jax.Array:
  """Tokens int32 [B, N, Q].

  Args:
    rng: PRNG key.
    predict_fn: (tokens int32 [B, N, Q], mask bool [B, N, Q], cond) -> (logits [B, N, M], means
      [B, N, M, E], log_scales [B, N, M, E]).
    table: [Q, C, E] float code vectors (the RVQ's effective codes).
    batch, seq_len: B, N.
    steps: S in [1, N Q].
    schedule: mask schedule name (`samplers.schedules.get`).
    temperature: >= 0, scales the mixture's standard deviations.
    choice_temperature: >= 0, Gumbel noise on the confidences (annealed to 0).
    cond: passed to predict_fn (e.g. class ids [B]).
  """
  q = table.shape[0]
  total = seq_len * q
  _checks.positive_int("steps", steps)
  if steps > total:
    raise ValueError(f"steps must be <= N Q = {total}, got {steps}")
  _checks.temperature(temperature)
  _checks.temperature(choice_temperature)
  counts = jnp.asarray(schedules.mask_counts(schedule, total, steps))
  tokens = jnp.zeros((batch, seq_len, q), jnp.int32)
  mask = jnp.ones((batch, seq_len, q), bool)

  def body(s, carry):
    tokens, mask, rng = carry
    rng, r_draw, r_noise = jax.random.split(rng, 3)
    logits, means, log_scales = predict_fn(tokens, mask, cond)
    z = rg.mog_sample(r_draw, logits, means, log_scales, temperature=temperature)
    tokens = jnp.where(mask, rg.requantize(z, mask, table), tokens)
    conf = rg.mog_log_prob(logits, means, log_scales, z)
    ratio = 1.0 - (s + 1).astype(jnp.float32) / steps
    conf = conf + choice_temperature * ratio * categorical.gumbel(r_noise, conf.shape)
    # Scores: more masked levels first, then low confidence (rank by -conf within [0, N)).
    low_first = jnp.argsort(jnp.argsort(-conf, axis=1), axis=1)
    scores = jnp.sum(mask, axis=-1) * seq_len + low_first
    new_mask = rg.depthwise_mask(scores, counts[s], q) & mask
    return tokens, new_mask, rng

  tokens, _, _ = jax.lax.fori_loop(0, steps, body, (tokens, mask, rng))
  return tokens

