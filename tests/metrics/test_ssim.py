import jax
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from jaxtok.metrics import ssim as ssim_lib


def test_matches_skimage_and_identity():
  rng = np.random.default_rng(0)
  x = rng.random((2, 20, 24, 3)).astype(np.float32)
  y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
  out = np.asarray(jax.jit(ssim_lib.ssim)(x, y))
  ref = [structural_similarity(x[i], y[i], gaussian_weights=True, sigma=1.5,
                               use_sample_covariance=False, data_range=1.0,
                               channel_axis=-1) for i in range(2)]
  np.testing.assert_allclose(out, ref, atol=1e-5)
  np.testing.assert_allclose(ssim_lib.ssim(x, x), [1.0, 1.0], atol=1e-5)


def test_too_small():
  with pytest.raises(ValueError, match="H and W"):
    ssim_lib.ssim(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 8, 3)))
