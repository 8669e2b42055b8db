import jax.numpy as jnp
import numpy as np

from jaxtok.losses import gan


def test_hinge_by_hand():
  real = jnp.array([2.0, 0.5])   # relu(1-r) = [0, 0.5] -> 0.25
  fake = jnp.array([-2.0, 0.0])  # relu(1+f) = [0, 1] -> 0.5
  np.testing.assert_allclose(gan.hinge_d_loss(real, fake), 0.375)
  np.testing.assert_allclose(gan.hinge_g_loss(fake), 1.0)
  np.testing.assert_allclose(gan.non_saturating_g_loss(jnp.zeros(3)),
                             np.log(2.0), rtol=1e-6)


def test_lecam_by_hand():
  state = {"real": jnp.float32(0.0), "fake": jnp.float32(0.0)}
  new = gan.lecam_update(state, jnp.array([1.0, 3.0]), jnp.array([-2.0]),
                         decay=0.5)
  np.testing.assert_allclose([new["real"], new["fake"]], [1.0, -1.0])
  # relu(r - (-1))^2 = [4, 16] -> 10; relu(1 - f)^2 = [9] -> 9.
  np.testing.assert_allclose(
      gan.lecam_loss(jnp.array([1.0, 3.0]), jnp.array([-2.0]), new), 19.0)


def test_gan_weight():
  assert float(gan.gan_weight(4, 5, 0.1)) == 0.0
  np.testing.assert_allclose(gan.gan_weight(5, 5, 0.1), 0.1)
