import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.losses import reconstruction as rec


def test_by_hand():
  x = jnp.array([[0.0, 1.0]])
  y = jnp.array([[0.5, 0.0]])
  np.testing.assert_allclose(rec.l1_loss(x, y), 0.75)
  np.testing.assert_allclose(rec.l2_loss(x, y), 0.625)
  np.testing.assert_allclose(rec.charbonnier_loss(x, y, eps=0.0), 0.75)
  with pytest.raises(ValueError, match="same shape"):
    rec.l1_loss(x, y[:, :1])
