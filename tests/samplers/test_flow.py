import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.samplers import flow


def test_euler_exact_for_constant_velocity():
  x0 = jnp.array([[0.0, 1.0]])
  x1 = jnp.array([[2.0, -3.0]])
  out = flow.sample(lambda x, t, c: x1 - x0, x0, steps=3, shift=3.0)
  np.testing.assert_allclose(out, x1, atol=1e-6)


def test_heun_second_order():
  x0 = jnp.ones((1, 1))
  f = lambda x, t, c: x
  err = [abs(float(flow.sample(f, x0, steps=n, method="heun")[0, 0]) - np.e) for n in (8, 16)]
  assert 3.5 < err[0] / err[1] < 4.5
  with pytest.raises(ValueError, match="steps"):
    flow.sample(f, x0, steps=0)
