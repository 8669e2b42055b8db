import functools
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.generators import heads
from jaxtok.samplers import flow

# rbg keys: the samplers work with any key implementation, and threefry's unrolled rounds cost
# seconds of XLA compile per random call on a shared 2-core CPU.
KEY = functools.partial(jax.random.key, impl="rbg")


def test_euler_exact_for_constant_velocity():
  x0 = jnp.array([[0.0, 1.0]])
  x1 = jnp.array([[2.0, -3.0]])
  out = flow.sample(lambda x, t, c: x1 - x0, x0, steps=3, shift=3.0)
  np.testing.assert_allclose(out, x1, atol=1e-6)


def test_hand_values_euler_and_heun_on_time_fields():
  x0 = jnp.zeros((1, 1))
  v = lambda x, t, c: 2.0 * t * jnp.ones_like(x)  # exact integral over [0, 1]: 1
  # Euler on the grid i/4: sum_i 2 (i/4) (1/4) = 2 (0 + 1 + 2 + 3) / 16 = 0.75
  assert float(flow.sample(v, x0, steps=4)[0, 0]) == pytest.approx(0.75, abs=1e-6)
  # Heun (trapezoid) is exact for fields linear in t: 1
  assert float(flow.sample(v, x0, steps=3, method="heun")[0, 0]) == pytest.approx(1.0, abs=1e-6)
  # a traced step count (DiSA) gives the same numbers: 1 - 1/n for Euler
  f = jax.jit(lambda n: flow.sample(v, x0, steps=n))
  for n in (1, 2, 5):
    assert float(f(jnp.int32(n))[0, 0]) == pytest.approx(1 - 1 / n, abs=1e-6)


def test_heun_second_order():
  x0 = jnp.ones((1, 1))
  f = lambda x, t, c: x
  err = [abs(float(flow.sample(f, x0, steps=n, method="heun")[0, 0]) - np.e) for n in (8, 16)]
  assert 3.5 < err[0] / err[1] < 4.5


def _minrf_euler(velocity_fn, x1, steps):
  """The release's MinRF Euler loop (FlexTok): x <- x - v(x, t) / T at t = i/T for i = T..1."""
  x = x1
  for i in range(steps, 0, -1):
    x = x - velocity_fn(x, jnp.float32(i / steps)) / steps
  return x


def test_flip_time_drives_flowhead_like_flextok_euler():
  """jaxtok's FlowHead (t = 1 noise convention) through flip_time equals the release's MinRF Euler
  loop (FlexTok's decoder samples through flip_time), and the straight path ends at the data
  exactly."""
  head = heads.FlowHead(token_dim=3, cond_dim=4, width=16, depth=1, rngs=nnx.Rngs(KEY(0)))
  k = head.out.kernel
  k.set_value(jax.random.normal(KEY(1), k.get_value().shape))  # zero-init otherwise
  z = jax.random.normal(KEY(2), (5, 4))
  noise = jax.random.normal(KEY(3), (5, 3))
  graphdef, state = nnx.split(head)

  @jax.jit
  def run(state):
    h = nnx.merge(graphdef, state)
    per_row = lambda x, t, z: h(x, jnp.full((x.shape[0],), t), z)
    return (flow.sample(flow.flip_time(per_row), noise, z, steps=6),
            _minrf_euler(lambda x, t: per_row(x, t, z), noise, 6))

  ours, ref = run(state)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  data = jnp.arange(15.0).reshape(5, 3)
  straight = lambda x, t, c: noise - data  # v = eps - x0 of x_t = (1 - t) x0 + t eps
  np.testing.assert_allclose(flow.sample(flow.flip_time(straight), noise, steps=4), data, atol=1e-5)


def _field(x, t, c):
  return jnp.sin(x) * c[:, None] + t


def test_guidance_neutral_cfg_and_apg_reduce():
  x0 = jax.random.normal(KEY(0), (3, 4))
  cond, uncond = jnp.array([1.0, 2.0, -1.0]), jnp.array([0.5, 0.0, 0.0])

  @jax.jit
  def run(scale):
    plain = flow.sample(_field, x0, cond, steps=5, method="heun")
    cfg = flow.sample(_field, x0, cond, uncond=uncond, cfg_scale=scale, steps=5, method="heun")
    apg = flow.sample(_field, x0, cond, uncond=uncond, cfg_scale=scale, steps=5, method="heun",
                      guidance="apg", apg_eta=1.0, apg_norm_threshold=0.0, apg_momentum=0.0)
    apg_default = flow.sample(_field, x0, cond, uncond=uncond, cfg_scale=scale, steps=5,
                              guidance="apg")
    return plain, cfg, apg, apg_default

  plain, cfg1, apg1, apgd1 = run(1.0)
  np.testing.assert_array_equal(cfg1, plain)
  _, cfg3, apg3, apgd3 = run(3.0)
  np.testing.assert_allclose(apg3, cfg3, rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(cfg3 - plain)).max() > 0.1
  assert np.abs(np.asarray(apgd3 - cfg3)).max() > 1e-3  # the release defaults do differ


def test_errors():
  f = lambda x, t, c: x
  x0 = jnp.ones((1, 1))
  for kw, msg in [(dict(steps=0), "steps must be an int >= 1, got 0"),
                  (dict(steps=2, method="rk4"), "method must be 'euler' or 'heun'"),
                  (dict(steps=2, shift=0.0), "shift must be > 0"),
                  (dict(steps=2, guidance="pag"), "guidance must be 'cfg' or 'apg'")]:
    with pytest.raises(ValueError, match=msg):
      flow.sample(f, x0, **kw)
