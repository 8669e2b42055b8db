"""ReCAP (Liu et al. 2025, "Plug-and-Play Context Feature Reuse for Efficient Masked Generation") on
MaskGIT decoding, model-agnostic.

The MaskGIT steps (`maskgit.sample`'s rule, schedule and keys) are grouped: a group starts with a full
model evaluation, which also returns every layer's keys/values (the context features) and picks, by
MaskGIT's confidence at that step, the positions U the whole group will reveal, in confidence order.
The group's first step reveals its share of U from the full logits (exactly `maskgit.sample`'s step);
each later step of the group is cheap: only the positions U are run (their tokens, revealed or still
masked, their own fresh keys/values) against the cached features of every other position, and the
step's share of U (the next ones in the confidence order) is drawn from those logits. As in the
released MaskGIT+ReCAP code, the first `pre_full_steps` steps are full, then each group is one full step
and `cheap_steps` cheap ones. cheap_steps = 0 is `maskgit.sample` (tested: same tokens).

Callables (B batch, K tokens, V vocabulary, Q = |U|):
  ``full_fn(tokens int32 [B, K], cond) -> (logits [B, K, V], cache)``;
  ``cheap_fn(tokens int32 [B, Q], positions int32 [B, Q], cache, cond) -> logits [B, Q, V]``
  (`generators.bert.MaskGITTransformer.logits_and_cache` / `.cached_logits`; the cache must have room
  for the largest group's Q queries: `max_group_tokens`). With a one-layer model the cached features
  of unchanged positions are exact, so a cheap step gives the full logits (tested).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.samplers import _checks, categorical, maskgit, schedules


def groups(steps: int, cheap_steps: int, pre_full_steps: int = 0) -> list[tuple[int, int]]:
  """(first step, number of steps) of each group: pre_full_steps single full steps, then groups of
  one full step and up to cheap_steps cheap ones."""
  out, s = [], 0
  while s < steps:
    g = 1 if s < pre_full_steps else min(1 + cheap_steps, steps - s)
    out.append((s, g))
    s += g
  return out


def remaining_counts(schedule: str, num_tokens: int, steps: int) -> np.ndarray:
  """Masked tokens left after each step from all-masked tokens: int32 [steps + 1] (entry 0 = K)."""
  return np.concatenate([[num_tokens], schedules.mask_count_table(schedule, num_tokens, steps)[num_tokens]])


def max_group_tokens(schedule, num_tokens, steps, cheap_steps, pre_full_steps=0) -> int:
  """The largest number of positions one group reveals (the cheap calls' Q; the cache's extra slots)."""
  left = remaining_counts(schedule, num_tokens, steps)
  return int(max(left[s] - left[s + g] for s, g in groups(steps, cheap_steps, pre_full_steps)))


def sample(rng, full_fn, cheap_fn, *, batch, num_tokens, mask_id, steps, cheap_steps=1,
           pre_full_steps=0, schedule="cosine", temperature=1.0, choice_temperature=4.5, top_k=None,
           top_p=None, cond=None):
  """ReCAP-MaskGIT from all-masked tokens [batch, num_tokens] (mask id explicit, as `maskgit.sample`).

  Returns (tokens int32 [B, K], stats {"full_calls": int, "cheap_calls": int}: the model calls of the
  schedule, Python ints). Groups are unrolled (their sizes are static); each is one full call and its
  cheap calls.
  """
  b, k = _checks.positive_int("batch", batch), _checks.positive_int("num_tokens", num_tokens)
  steps = _checks.positive_int("steps", steps)
  if steps > k:
    raise ValueError(f"steps must be <= num_tokens={k}, got {steps}")
  if isinstance(cheap_steps, bool) or not isinstance(cheap_steps, (int, np.integer)) or cheap_steps < 0:
    raise ValueError(f"cheap_steps must be an int >= 0, got {cheap_steps!r}")
  if isinstance(pre_full_steps, bool) or not isinstance(pre_full_steps, (int, np.integer)) \
      or pre_full_steps < 0:
    raise ValueError(f"pre_full_steps must be an int >= 0, got {pre_full_steps!r}")
  left = remaining_counts(schedule, k, steps)
  tok = jnp.full((b, k), mask_id, jnp.int32)
  v = jax.eval_shape(lambda t: full_fn(t, cond)[0], tok).shape[-1]
  _checks.mask_id(mask_id, v)
  categorical.check_args(v, temperature=temperature, top_k=top_k, top_p=top_p)
  plan = groups(steps, cheap_steps, pre_full_steps)
  rows = jnp.arange(b)[:, None]
  for s0, g in plan:
    masked = tok == mask_id
    logits, cache = full_fn(tok, cond)
    logits = maskgit.forbid_mask(jnp.asarray(logits, jnp.float32), mask_id)
    sampled, conf = maskgit.draw_with_confidence(rng, s0, steps, logits, masked,
                                                 temperature=temperature, top_k=top_k, top_p=top_p,
                                                 choice_temperature=choice_temperature)
    rank = jnp.argsort(jnp.argsort(conf, -1), -1)  # known tokens (+inf) rank highest
    # maskgit.sample's step: keep the sampled tokens of the masked positions ranked >= left[s0 + 1]
    tok = jnp.where(masked & (rank >= left[s0 + 1]), sampled, tok)
    if g == 1:
      continue
    # U: the masked positions ranked in [left[s0 + g], left[s0]) (the known ones rank above).
    u_pos = jnp.argsort(rank, -1)[:, left[s0 + g]:left[s0]]
    u_rank = jnp.take_along_axis(rank, u_pos, 1)
    for s in range(s0 + 1, s0 + g):
      lq = cheap_fn(jnp.take_along_axis(tok, u_pos, 1), u_pos, cache, cond)
      lq = maskgit.forbid_mask(jnp.asarray(lq, jnp.float32), mask_id)
      k_tok = jax.random.split(jax.random.fold_in(rng, s))[0]
      drawn = categorical.sample(k_tok, lq, temperature=temperature, top_k=top_k, top_p=top_p)
      reveal = (u_rank >= left[s + 1]) & (u_rank < left[s])
      tok = tok.at[rows, u_pos].set(jnp.where(reveal, drawn, jnp.take_along_axis(tok, u_pos, 1)))
  return tok, {"full_calls": len(plan), "cheap_calls": steps - len(plan)}
