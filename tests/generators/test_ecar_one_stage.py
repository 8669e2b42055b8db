"""E-CAR's training objective with a single stage is plain rectified flow matching over the whole
grid: stage 0 starts from pure noise n at t = 0 and ends at the data x at t = 1, so the loss is
mean ||v(n + tau (x - n), tau, z) - (x - n)||^2 with z the condition of a zero input map. Recomputed
here by hand from the same keys and compared with `generators.ecar.loss` under jit."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok.generators import ecar
from jaxtok.samplers import ecar as ms

KEY = functools.partial(jax.random.key, impl="rbg")


def test_one_stage_loss_is_plain_rectified_flow():
  model = ecar.ECAR(token_dim=3, seq_len=4, num_stages=1, num_classes=2, width=16, depth=1,
                    heads=2, head_width=16, head_depth=1, class_dropout=0.0, rngs=nnx.Rngs(KEY(0)))
  assert model.sides == (2,) and model.bounds == (0.0, 1.0)
  np.testing.assert_allclose(ms.windows(model.bounds), ([0.0], [1.0]))   # the whole trajectory
  x = jax.random.normal(KEY(1), (2, 4, 3))
  labels = jnp.array([1, -1])
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, x, rng):
    m = nnx.merge(graphdef, state)
    value, metrics = ecar.loss(m, x, labels, rng=rng)
    # By hand: the loss splits rng into (path, dropout, time) and folds in the stage index 0.
    r_path, r_drop, r_time = jax.random.split(rng, 3)
    n = jax.random.normal(jax.random.fold_in(r_path, 0), (2, 2, 2, 3))
    tau = jax.random.uniform(jax.random.fold_in(r_time, 0), (2, 2, 2)).reshape(-1)
    z = m.condition((jnp.zeros((2, 2, 2, 3)),), labels, train=True, rng=r_drop).reshape(8, -1)
    x0, n0 = x.reshape(8, 3), n.reshape(8, 3)
    x_t = n0 + tau[:, None] * (x0 - n0)
    want = jnp.mean((m.head(x_t, tau, z) - (x0 - n0)) ** 2)
    return value, metrics, want

  value, metrics, want = run(state, x, KEY(2))
  np.testing.assert_allclose(float(value), float(want), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["loss_stage0"]), float(want), rtol=1e-6)


def test_window_endpoints_are_the_stage_states():
  """tau = 0 and tau = 1 give exactly the stage's start and end states at t = s_k and t = e_k."""
  x = jax.random.normal(KEY(3), (1, 4, 4, 2))
  bounds = ms.uniform_bounds(3)
  starts, ends = ms.windows(bounds)
  states = jax.jit(lambda x, r: ms.trajectory(x, bounds, r))(x, KEY(4))
  for k, st in enumerate(states):
    r = st.start.shape[1]
    for tau, want_x, want_t in ((0.0, st.start, starts[k]), (1.0, st.end, ends[k])):
      x_t, t, _ = ms.interpolate(st, float(starts[k]), float(ends[k]), jnp.full((1, r, r), tau))
      np.testing.assert_allclose(x_t, want_x, atol=1e-6)
      np.testing.assert_allclose(t, want_t, atol=1e-7)
