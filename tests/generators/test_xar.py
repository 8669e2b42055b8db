"""Tests of the xAR model: block causality, Noisy Context Learning's noise, teacher forcing = next-
token flow AR over the sampler's call, loss under jit."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.generators import xar


def _model(entity, k=2, noisy_context=True, seq_len=8, grid_width=4):
  m = xar.XAR(token_dim=2, seq_len=seq_len, grid_width=grid_width, entity=entity,
              entity_size=k, num_classes=2, width=16, depth=1, heads=2,
              noisy_context=noisy_context, rngs=nnx.Rngs(0))
  # AdaLN-zero starts as the identity (time and class would not matter yet): perturb every weight.
  state = nnx.state(m, nnx.Param)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(9), len(leaves))
  nnx.update(m, jax.tree.unflatten(tree, [a + 0.1 * jax.random.normal(k, a.shape)
                                          for a, k in zip(leaves, keys)]))
  return m


@pytest.fixture(scope="module")
def cell_model():
  return _model("cell")


def _jit(model, method):
  graphdef, state = nnx.split(model)
  return jax.jit(lambda *a: getattr(nnx.merge(graphdef, state), method)(*a))


def test_velocity_is_block_causal_over_cells(cell_model):
  m = cell_model  # 2 x 4 grid: entity 0 = sequence 0..3, entity 1 = 4..7
  f = _jit(m, "velocity")
  x = jax.random.normal(jax.random.key(0), (2, 8, 2))
  t = jnp.full((2, 8), 0.5)
  labels = jnp.array([0, 1])
  v = f(x, t, labels)
  later = f(x.at[:, 5].add(3.0), t.at[:, 6].set(0.9), labels)  # entity 1 changed
  np.testing.assert_allclose(later[:, :4], v[:, :4], atol=1e-6)
  assert not np.allclose(later[:, 4:], v[:, 4:])
  earlier = f(x.at[:, 1].add(3.0), t, labels)  # entity 0 changed: both see it
  assert not np.allclose(earlier[:, :4], v[:, :4]) and not np.allclose(earlier[:, 4:], v[:, 4:])
  # Time enters per entity: moving entity 0's time changes entity 0's own velocity.
  assert not np.allclose(f(x, t.at[:, :4].set(0.1), labels)[:, :4], v[:, :4])


def test_entity_noise_one_independent_time_per_entity():
  ids = np.repeat(np.arange(4), 2)
  x = jax.random.normal(jax.random.key(1), (64, 8, 3))
  x_t, t, eps = xar.entity_noise(jax.random.key(2), x, ids)
  t = np.asarray(t)
  np.testing.assert_array_equal(t[:, 0::2], t[:, 1::2])  # constant inside an entity
  assert len(np.unique(t[0])) == 4  # independent across entities
  assert 0 < t.min() and t.max() < 1
  np.testing.assert_allclose(x_t, (1 - t)[..., None] * x + t[..., None] * eps, atol=1e-6)


def test_token_entities_without_noisy_context_are_next_token_flow_ar():
  """entity "token" + teacher forcing: the velocity at noisy token i from the training pass
  ([clean; noisy] with `teacher_forcing_mask`) equals the velocity the sampler's call gives token i
  (`velocity` on one sequence: tokens < i clean at t = 0, token i noisy at t_i, later tokens
  anything at t = 1) -- the targets of a per-token causal flow model -- and it ignores clean
  tokens >= i."""
  m = _model("token", noisy_context=False, seq_len=4, grid_width=2)
  tf, vel = _jit(m, "teacher_forced_velocity"), _jit(m, "velocity")
  k = jax.random.split(jax.random.key(3), 3)
  clean = jax.random.normal(k[0], (2, 4, 2))
  x_t = jax.random.normal(k[1], (2, 4, 2))
  t = jax.random.uniform(k[2], (2, 4))
  labels = jnp.array([1, -1])
  out = tf(clean, x_t, t, labels)
  for i in range(4):
    seq = jnp.where((jnp.arange(4) < i)[None, :, None], clean, 7.0)
    seq = seq.at[:, i].set(x_t[:, i])
    times = jnp.where(jnp.arange(4) < i, 0.0, 1.0)[None].repeat(2, 0).at[:, i].set(t[:, i])
    np.testing.assert_allclose(out[:, i], vel(seq, times, labels)[:, i], atol=1e-5)
    moved = tf(clean.at[:, i:].add(5.0), x_t, t, labels)
    np.testing.assert_allclose(moved[:, i], out[:, i], atol=1e-5)


def test_loss_under_jit_has_gradients_and_refuses_bad_shapes(cell_model):
  m = cell_model
  for noisy in (True, False):  # Noisy Context Learning, then the teacher-forcing ablation
    m.noisy_context = noisy
    graphdef, state = nnx.split(m)
    tokens = jax.random.normal(jax.random.key(4), (2, 8, 2))

    @jax.jit
    def f(state):
      return xar.loss(nnx.merge(graphdef, state), tokens, jnp.array([0, -1]),
                      rng=jax.random.key(5))[0]
    value, g = jax.value_and_grad(f)(state)
    assert np.isfinite(value) and float(jnp.abs(g["out"]["kernel"].get_value()).sum()) > 0
  m.noisy_context = True
  with pytest.raises(ValueError, match=r"tokens must be \[B, 8, 2\]"):
    xar.loss(m, jnp.zeros((1, 4, 2)), None, rng=jax.random.key(0))
  with pytest.raises(ValueError, match="entity must be one of"):
    _model("patch")
  with pytest.raises(ValueError, match="unknown|valid"):
    xar.make_model({"name": "xar", "token_dim": 2, "seq_len": 4, "entitty": "cell"},
                   rngs=nnx.Rngs(0))
