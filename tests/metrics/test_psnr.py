import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.metrics import psnr as psnr_lib


def test_known_mse():
  x = jnp.zeros((2, 4, 4, 3))
  # MSE 0.01 -> 20 dB; MSE 0.0001 -> 40 dB (hand-derived).
  y = jnp.stack([jnp.full((4, 4, 3), 0.1), jnp.full((4, 4, 3), 0.01)])
  out = jax.jit(psnr_lib.psnr)(x, y)
  np.testing.assert_allclose(out, [20.0, 40.0], rtol=1e-5)
  assert psnr_lib.mean_psnr(out) == pytest.approx(30.0, rel=1e-6)


def test_bad_shape():
  with pytest.raises(ValueError, match="x.shape"):
    psnr_lib.psnr(jnp.zeros((4, 4, 3)), jnp.zeros((4, 4, 3)))
