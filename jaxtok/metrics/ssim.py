"""Structural similarity (Wang et al. 2004) with an 11x11 Gaussian window.

Matches skimage.metrics.structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1):
skimage filters with reflect padding and then drops a 5-pixel border, which
equals a 'valid' convolution, so we compute only the valid region.

Dimensions: B batch, H height, W width, C channels.
"""

import jax
import jax.numpy as jnp
import numpy as np


def _gaussian_1d(sigma, radius):
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  w = np.exp(-0.5 * (x / sigma) ** 2)
  return (w / w.sum()).astype(np.float32)


def ssim(x, y, *, data_range=1.0, sigma=1.5, k1=0.01, k2=0.03):
  """Per-image SSIM averaged over pixels and channels.

  Args:
    x: [B, H, W, C] float images, H and W at least 11.
    y: [B, H, W, C] float images, same shape.

  Returns:
    [B] float32 SSIM.
  """
  if x.shape != y.shape or x.ndim != 4:
    raise ValueError(f"x and y must both be [B,H,W,C]; got x.shape={x.shape},"
                     f" y.shape={y.shape}")
  radius = int(3.5 * sigma + 0.5)  # skimage's truncate=3.5
  if min(x.shape[1], x.shape[2]) < 2 * radius + 1:
    raise ValueError(f"H and W must be >= {2 * radius + 1}; got {x.shape}")
  w = jnp.asarray(_gaussian_1d(sigma, radius))
  x = x.astype(jnp.float32)
  y = y.astype(jnp.float32)

  def filt(img):
    # Separable filter: rows then columns, 'valid' region only.
    c = img.shape[-1]
    kh = jnp.tile(w.reshape(-1, 1, 1, 1), (1, 1, 1, c))
    kw = jnp.tile(w.reshape(1, -1, 1, 1), (1, 1, 1, c))
    dn = ("NHWC", "HWIO", "NHWC")
    out = jax.lax.conv_general_dilated(img, kh, (1, 1), "VALID",
                                       dimension_numbers=dn,
                                       feature_group_count=c)
    return jax.lax.conv_general_dilated(out, kw, (1, 1), "VALID",
                                        dimension_numbers=dn,
                                        feature_group_count=c)

  mx, my = filt(x), filt(y)
  vx = filt(x * x) - mx * mx
  vy = filt(y * y) - my * my
  cxy = filt(x * y) - mx * my
  c1 = (k1 * data_range) ** 2
  c2 = (k2 * data_range) ** 2
  s = ((2 * mx * my + c1) * (2 * cxy + c2)) / (
      (mx * mx + my * my + c1) * (vx + vy + c2))
  return jnp.mean(s, axis=(1, 2, 3))
