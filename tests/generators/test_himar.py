"""Tests of Hi-MAR: pivots are the pooled grid, the phases' masking rules, phase 2 reads the
pivots, the scale-aware head, loss under jit, the chained sampler."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.generators import himar
from jaxtok.samplers import himar as himar_sampler


@pytest.fixture(scope="module")
def model():
  # 4 x 4 grid of 2-dim tokens, pivots 2 x 2 (factor 2).
  m = himar.HiMAR(token_dim=2, seq_len=16, pivot_factor=2, num_classes=2, width=16, depth=1,
                  heads=2, head_width=16, head_depth=1, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(m)
  call = lambda name: jax.jit(lambda *a: getattr(nnx.merge(graphdef, state), name)(*a))
  return m, call("condition_pivots"), call("condition_dense")


def test_pivots_are_the_pooled_grid_by_hand():
  grid = np.arange(16, dtype=np.float32).reshape(1, 16, 1)  # 4 x 4, row-major
  p = himar.pivots_of(jnp.asarray(grid), 4, 4, 2)
  np.testing.assert_allclose(p[0, :, 0], [2.5, 4.5, 10.5, 12.5])  # (0+1+4+5)/4, (2+3+6+7)/4, ...
  p = himar.pivots_of(jnp.asarray(np.arange(8, dtype=np.float32).reshape(1, 8, 1)), 2, 4, 2)
  np.testing.assert_allclose(p[0, :, 0], [2.5, 4.5])  # a 2 x 4 grid: two pivots


def test_phase_masking_rules_and_phase_two_reads_the_pivots(model):
  m, pivots_fn, dense_fn = model
  k = jax.random.split(jax.random.key(0), 2)
  dense = jax.random.normal(k[0], (2, 16, 2))
  pivots = m.pivots(dense)
  labels = jnp.array([0, 1])
  # Phase 1: masked pivots' values are ignored, known ones matter.
  pmask = jnp.array([[True, True, False, False]] * 2)
  z1 = pivots_fn(pivots, pmask, labels)
  assert z1.shape == (2, 4, 16)
  np.testing.assert_allclose(pivots_fn(pivots.at[:, 0].add(5.0), pmask, labels), z1, atol=1e-5)
  assert not np.allclose(pivots_fn(pivots.at[:, 3].add(5.0), pmask, labels), z1)
  # Phase 2: masked dense values are ignored; known dense tokens and every pivot matter.
  dmask = jnp.zeros((2, 16), bool).at[:, :8].set(True)
  z2 = dense_fn(dense, dmask, (labels, pivots))
  assert z2.shape == (2, 16, 16)
  np.testing.assert_allclose(dense_fn(dense.at[:, 2].add(5.0), dmask, (labels, pivots)), z2,
                             atol=1e-5)
  assert not np.allclose(dense_fn(dense.at[:, 12].add(5.0), dmask, (labels, pivots)), z2)
  for i in range(4):  # changing any one pivot changes the phase-2 conditions
    assert not np.allclose(dense_fn(dense, dmask, (labels, pivots.at[:, i].add(1.0))), z2)
  # The two phases are told apart: the same pivots give other conditions in phase 2.
  z_all = m.condition(pivots, jnp.zeros((2, 4), bool), dense, jnp.ones((2, 16), bool), labels, 0)
  z_p2 = m.condition(pivots, jnp.zeros((2, 4), bool), dense, jnp.ones((2, 16), bool), labels, 1)
  assert not np.allclose(z_all, z_p2)


def test_scale_aware_head_and_loss_under_jit(model):
  m, _, _ = model
  x, z = jax.random.normal(jax.random.key(1), (3, 2)), jax.random.normal(jax.random.key(2), (3, 16))
  t = jnp.full((3,), 0.5)
  # Make the zero-initialised head outputs non-trivial so that the phase can show.
  graphdef, state = nnx.split(m)
  state = jax.tree.map(lambda a: a + 0.1, state)
  m2 = nnx.merge(graphdef, state)
  assert not np.allclose(m2.head_velocity(x, t, z, 0), m2.head_velocity(x, t, z, 1))
  tokens = jax.random.normal(jax.random.key(3), (2, 16, 2))

  @jax.jit
  def f(state):
    return himar.loss(nnx.merge(graphdef, state), tokens, jnp.array([0, -1]),
                      rng=jax.random.key(4))
  (value, metrics), g = jax.value_and_grad(f, has_aux=True)(state)
  np.testing.assert_allclose(value, 2.0 * metrics["pivot_loss"] + 0.75 * metrics["dense_loss"],
                             rtol=1e-5)
  assert float(jnp.abs(g["head_phase_embedding"].get_value()).sum()) > 0
  with pytest.raises(ValueError, match="pivot_factor must be >= 2 and divide"):
    himar.HiMAR(token_dim=2, seq_len=16, pivot_factor=3, rngs=nnx.Rngs(0))


def test_sampler_chains_pivots_then_dense_and_passes_the_pivots():
  """Fixed callables: the pivot phase's head returns a constant velocity per phase; the dense
  phase's condition is the mean of the pivots it receives, so the dense tokens prove phase 2 saw
  phase 1's pivots (under guidance too)."""
  seen = []

  def pivot_cond(tok, mask, labels):
    return jnp.zeros(tok.shape[:2] + (1,))

  def dense_cond(tok, mask, labels_and_pivots):
    _, piv = labels_and_pivots
    seen.append(piv.shape)
    return jnp.broadcast_to(piv.mean(axis=(1, 2))[:, None, None], tok.shape[:2] + (1,))

  def head(x, t, z, phase):  # flow convention: x1 = x0 + v over unit time
    return jnp.broadcast_to(jnp.where(phase == 0, 3.0, z), x.shape) + 0.0 * x

  out = himar_sampler.sample(jax.random.key(0), pivot_cond, dense_cond, head, batch=2,
                             num_pivots=2, num_tokens=6, token_dim=2, pivot_steps=2, steps=3,
                             head_steps=2, labels=jnp.array([0, 1]), uncond=jnp.array([-1, -1]),
                             cfg_scale=2.0, temperature=0.0)
  np.testing.assert_allclose(out.pivots, 3.0, atol=1e-5)  # from x = 0 with velocity 3
  np.testing.assert_allclose(out.tokens, 3.0, atol=1e-5)  # z = mean of the pivots = 3
  assert seen and seen[0][1:] == (2, 2) and seen[0][0] == 4  # doubled batch under guidance
