"""Differentiable 2D Gaussian splatting of feature vectors onto a grid (GPSToken's renderer), pure JAX.

A Gaussian s has mean (x_s, y_s) and covariance from (sigma_x, sigma_y, rho) (standard deviations and
correlation coefficient, GPSToken's parameterisation):
  Sigma_s = [[sx^2, rho sx sy], [rho sx sy, sy^2]]
so its peak-normalised density at a point with offset (dx, dy) = (u - x_s, v - y_s) is
  g_s(u, v) = exp(-q / (2 (1 - rho^2))),  q = dx^2 / sx^2 - 2 rho dx dy / (sx sy) + dy^2 / sy^2
(the density divided by its maximum 1 / (2 pi sx sy sqrt(1 - rho^2)); the release renders with this
peak normalisation). The feature map is the density-weighted sum of the Gaussians' features:
  F(u, v) = sum_s g_s(u, v) f_s.
Pixel centres are in [-1, 1]: u_j = 2 j / (W - 1) - 1, v_i = 2 i / (H - 1) - 1 (the release's
`align_corners` convention). With `dmax` a Gaussian contributes only where |dx| <= dmax sx and
|dy| <= dmax sy (the release's speed cut-off; the cut itself is not differentiable, so tests use
dmax=None).

Everything is dense broadcasting (S x H x W values per image), so gradients come from autodiff; no
custom kernel. Shapes: sigmas [..., S, 3], means [..., S, 2], features [..., S, C] ->
[..., H, W, C] float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def pixel_coords(size: int) -> jax.Array:
  """The pixel centres 2 j / (size - 1) - 1, j = 0..size-1, float32 [size] (size >= 2)."""
  if size < 2:
    raise ValueError(f"a rendered side must be >= 2 pixels, got {size}")
  return 2.0 * jnp.arange(size, dtype=jnp.float32) / (size - 1) - 1.0


def densities(sigmas: jax.Array, means: jax.Array, height: int, width: int,
              dmax: float | None = None) -> jax.Array:
  """Peak-normalised Gaussian values g_s at every pixel: [..., S, H, W] in sigmas' float dtype."""
  dtype = jnp.result_type(sigmas.dtype, jnp.float32)
  sx, sy, rho = (sigmas[..., i].astype(dtype)[..., None, None] for i in range(3))
  x, y = (means[..., i].astype(dtype)[..., None, None] for i in range(2))
  dx = pixel_coords(width).astype(dtype)[None, :] - x   # [..., S, 1, W]
  dy = pixel_coords(height).astype(dtype)[:, None] - y  # [..., S, H, 1]
  q = jnp.square(dx / sx) - 2.0 * rho * (dx / sx) * (dy / sy) + jnp.square(dy / sy)
  g = jnp.exp(-q / (2.0 * (1.0 - jnp.square(rho))))
  if dmax is not None:
    inside = (jnp.abs(dx) <= dmax * sx) & (jnp.abs(dy) <= dmax * sy)
    g = jnp.where(inside, g, 0.0)
  return g


def render(sigmas: jax.Array, means: jax.Array, features: jax.Array, height: int, width: int,
           dmax: float | None = None) -> jax.Array:
  """F = sum_s g_s f_s (module docstring): [..., H, W, C] float32 (float64 under x64 inputs).

  Args:
    sigmas: [..., S, 3] (sigma_x > 0, sigma_y > 0, rho in (-1, 1)).
    means: [..., S, 2] (x, y) in the [-1, 1] pixel frame.
    features: [..., S, C].
    height, width: the grid (>= 2 each).
    dmax: optional cut-off in standard deviations per axis.
  """
  if sigmas.shape[-1] != 3 or means.shape[-1] != 2:
    raise ValueError(f"sigmas must be [..., S, 3] and means [..., S, 2], got {tuple(sigmas.shape)} "
                     f"and {tuple(means.shape)}")
  if features.shape[:-1] != sigmas.shape[:-1] or means.shape[:-1] != sigmas.shape[:-1]:
    raise ValueError(f"sigmas, means and features must share [..., S], got {tuple(sigmas.shape)}, "
                     f"{tuple(means.shape)}, {tuple(features.shape)}")
  g = densities(sigmas, means, height, width, dmax)
  f = features.astype(g.dtype)
  return jnp.einsum("...shw,...sc->...hwc", g, f)
