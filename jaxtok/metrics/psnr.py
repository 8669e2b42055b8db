"""Peak signal-to-noise ratio for images in [0, 1].

Dimensions: B batch, H height, W width, C channels.
"""

import jax.numpy as jnp
import numpy as np


def psnr(x, y, *, data_range=1.0):
  """Per-image PSNR in dB.

  Args:
    x: [B, H, W, C] float images.
    y: [B, H, W, C] float images, same shape as x.
    data_range: peak value (1.0 for images in [0, 1]).

  Returns:
    [B] float32 PSNR; +inf where the images are identical.
  """
  if x.shape != y.shape or x.ndim != 4:
    raise ValueError(
        f"x and y must both be [B,H,W,C]; got x.shape={x.shape}, "
        f"y.shape={y.shape}")
  # Math in float32 even for bf16 inputs.
  diff = x.astype(jnp.float32) - y.astype(jnp.float32)
  mse = jnp.mean(diff * diff, axis=(1, 2, 3))
  return 10.0 * jnp.log10(jnp.float32(data_range) ** 2 / mse)


def mean_psnr(values):
  """Dataset mean of per-image PSNR values, accumulated in float64 on host."""
  return float(np.mean(np.asarray(values, dtype=np.float64)))
