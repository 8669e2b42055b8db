"""The parallel first-hitting sampler: one event per step is the exact sequential sampler (same
draws, and the exact joint within a TV bound); m events per step take ceil(n / m) calls and keep
given tokens."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.samplers import masked_diffusion as md
from tests.samplers.test_masked_diffusion import KEY, MASK, P, _tv, exact_logits

N = 20_000
ALL = jnp.full((N, 3), MASK, jnp.int32)


def test_one_event_per_step_is_the_exact_sequential_sampler():
  run = jax.jit(lambda r: md.first_hitting_parallel(r, exact_logits, ALL, mask_id=MASK,
                                                    tokens_per_step=1))
  tok, times = run(KEY(0))
  # In distribution: the exact joint P. TV of an empirical 27-cell histogram of N draws has mean
  # <= sum_x sqrt(p(1-p)/N)/2 ~ 0.013 here; 0.03 leaves a wide margin.
  assert _tv(tok, P) < 0.03
  # And draw for draw: the same keys give what `first_hitting` gives.
  ref, ref_times = jax.jit(lambda r: md.first_hitting(r, exact_logits, ALL, mask_id=MASK))(KEY(0))
  np.testing.assert_array_equal(tok, ref)
  np.testing.assert_array_equal(times, ref_times)


def test_several_events_per_step_calls_and_given_tokens():
  calls = []

  def logits_fn(tokens):
    jax.debug.callback(lambda: calls.append(1))
    return exact_logits(tokens)

  tokens = jnp.asarray([[MASK, MASK, MASK], [1, MASK, MASK]], jnp.int32)
  tok, times = jax.jit(lambda r: md.first_hitting_parallel(r, logits_fn, tokens, mask_id=MASK,
                                                           tokens_per_step=2))(KEY(1))
  jax.effects_barrier()
  assert len(calls) == 2  # ceil(3 / 2) calls for the fuller row; the loop runs per batch
  tok, times = np.asarray(tok), np.asarray(times)
  assert tok.max() < MASK and tok[1, 0] == 1 and times[1, 0] == 1.0
  # Hit times lie in (0, 1) and the two events of one call are ordered (first-hitting times).
  assert (times[0] > 0).all() and (times[0] < 1).all() and len(set(times[0].tolist())) == 3
