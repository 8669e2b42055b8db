"""Tests of the shared quantizer pieces: straight-through, usage metrics, argument checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.quantizers import base


def test_straight_through_value_and_identity_gradient():
  x = jnp.array([0.3, -1.2, 2.0])
  q = jnp.array([0.0, -1.0, 2.5])
  np.testing.assert_array_equal(base.straight_through(x, q), q)
  g = jax.grad(lambda x: jnp.sum(base.straight_through(x, q) * jnp.array([1.0, 2.0, 3.0])))(x)
  np.testing.assert_array_equal(g, [1.0, 2.0, 3.0])


def test_usage_metrics_hand_values():
  # Four codes, two used: half the codes, entropy of (3/4, 1/4).
  m = base.usage_metrics(jnp.array([0, 0, 0, 2]), 4)
  np.testing.assert_allclose(m["usage"], 0.5)
  h = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
  np.testing.assert_allclose(m["perplexity"], np.exp(h), rtol=1e-6)
  # Uniform use of all K codes gives perplexity K.
  m = base.usage_metrics(jnp.arange(16) % 8, 8)
  np.testing.assert_allclose(m["usage"], 1.0)
  np.testing.assert_allclose(m["perplexity"], 8.0, rtol=1e-6)


def test_checks_name_the_argument():
  with pytest.raises(TypeError, match="z must have a floating dtype"):
    base.check_float_array("z", jnp.zeros((2, 3), jnp.int32))
  with pytest.raises(ValueError, match=r"z must have last dimension 4, got shape \(2, 3\)"):
    base.check_float_array("z", jnp.zeros((2, 3)), last_dim=4)
  with pytest.raises(TypeError, match="indices must have an integer dtype"):
    base.check_int_array("indices", jnp.zeros((2,)))
  with pytest.raises(ValueError, match="codebook_size must be >= 2, got 1"):
    base.check_positive_int("codebook_size", 1, minimum=2)
  with pytest.raises(TypeError, match="codebook_size must be an int"):
    base.check_positive_int("codebook_size", 2.0)


def test_eight_fake_devices():
  assert jax.device_count() == 8
