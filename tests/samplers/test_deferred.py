"""Deferred commitment decoding: commits only inside its sliding window, commits everything, and
its threshold's extremes give one window per call or one token per call."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.samplers import deferred
from tests.samplers.test_masked_diffusion import KEY

V, K, MASK = 4, 7, 4


def _logits_fn(tokens):
  """Logits that depend on the revealed tokens (a fixed random linear map of their one-hots)."""
  w = jax.random.normal(KEY(0), (K * (V + 1), K * V)) * 2.0
  return (jax.nn.one_hot(tokens, V + 1).reshape(tokens.shape[0], -1) @ w).reshape(-1, K, V)


def _replay_window_check(given, step_of, window):
  """Every commit of call s lies among the first `window` positions still masked before call s."""
  for row_given, row in zip(given, step_of):
    masked_before = lambda s: [p for p in range(K) if row_given[p] == MASK and row[p] >= s]
    for s in range(row.max() + 1):
      allowed = set(masked_before(s)[:window])
      committed = {p for p in range(K) if row[p] == s}
      assert committed and committed <= allowed, (s, committed, allowed)


@pytest.mark.parametrize("threshold", [0.0, 0.6, 2.0])
def test_commits_inside_the_window_and_everything(threshold):
  rng = np.random.default_rng(0)
  given = np.where(rng.random((6, K)) < 0.25, rng.integers(0, V, (6, K)), MASK).astype(np.int32)
  labels = jnp.arange(6)
  fn = lambda tok, cond: _logits_fn(tok) + cond[:, None, None] * 0.1
  tok, step_of = jax.jit(lambda r: deferred.sample(
      r, fn, jnp.asarray(given), mask_id=MASK, window=3, threshold=threshold, cond=labels,
      uncond=jnp.full_like(labels, -1), cfg_scale=1.5))(KEY(2))
  tok, step_of = np.asarray(tok), np.asarray(step_of)
  assert tok.max() < V  # everything committed
  np.testing.assert_array_equal(tok[given != MASK], given[given != MASK])
  assert (step_of[given != MASK] == -1).all() and (step_of[given == MASK] >= 0).all()
  _replay_window_check(given, step_of, 3)
  n = (given == MASK).sum(-1)
  if threshold == 0.0:  # every draw is certain enough: one full window per call
    np.testing.assert_array_equal(step_of.max(-1) + 1, -(-n // 3))
  if threshold == 2.0:  # nothing is: one token (the most certain) per call
    np.testing.assert_array_equal(step_of.max(-1) + 1, n)


def test_bad_arguments():
  tokens = jnp.full((1, K), MASK, jnp.int32)
  with pytest.raises(ValueError, match="window must be <= the number of tokens K=7, got 8"):
    deferred.sample(KEY(0), _logits_fn, tokens, mask_id=MASK, window=8)
  with pytest.raises(ValueError, match="threshold must be >= 0"):
    deferred.sample(KEY(0), _logits_fn, tokens, mask_id=MASK, window=2, threshold=-1)
