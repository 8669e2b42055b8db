"""Tests of the MAR continuous-token model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.generators import heads, mar


def _model():
  return mar.MAR(token_dim=3, seq_len=6, num_classes=2, width=32, depth=2, heads=4, head_width=32,
                 head_depth=2, rngs=nnx.Rngs(0))


def test_masked_values_are_ignored_and_known_values_matter():
  m = _model()
  tokens = jax.random.normal(jax.random.key(0), (2, 6, 3))
  mask = jnp.array([[True] * 3 + [False] * 3] * 2)
  z = m.condition(tokens, mask)
  changed_masked = tokens.at[:, 0].add(5.0)
  np.testing.assert_allclose(m.condition(changed_masked, mask), z, atol=1e-6)
  changed_known = tokens.at[:, 4].add(5.0)
  assert not np.allclose(m.condition(changed_known, mask), z)
  assert z.shape == (2, 6, 32)


def test_training_mask_ratio_in_range():
  mask = mar.training_mask(jax.random.key(0), 256, 20)
  counts = np.asarray(mask.sum(1))
  assert counts.min() >= 14 and counts.max() <= 20  # ratio in [0.7, 1]
  assert counts.mean() > 16


def test_per_row_flow_loss_matches_the_head_loss_mean():
  m = _model()
  x = jax.random.normal(jax.random.key(1), (5, 3))
  z = jax.random.normal(jax.random.key(2), (5, 32))
  rows = heads.flow_loss_per_row(m.head, x, z, jax.random.key(3), batch_mul=2)
  whole = heads.flow_loss(m.head, x, z, jax.random.key(3), batch_mul=2)
  np.testing.assert_allclose(rows.mean(), whole, rtol=1e-5)


def test_loss_grad_under_jit():
  m = _model()
  graphdef, state = nnx.split(m)
  tokens = jax.random.normal(jax.random.key(4), (2, 6, 3))

  @jax.jit
  def f(state):
    return mar.loss(nnx.merge(graphdef, state), tokens, jnp.array([0, 1]), rng=jax.random.key(5))[0]
  g = jax.grad(f)(state)
  assert float(jnp.abs(g["head"]["out"]["kernel"].get_value()).sum()) > 0


def test_bad_shapes():
  with pytest.raises(ValueError, match=r"tokens must be \[B, 6, 3\]"):
    _model().condition(jnp.zeros((1, 5, 3)), jnp.zeros((1, 5), bool))
