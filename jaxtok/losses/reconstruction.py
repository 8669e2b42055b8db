"""Pixel reconstruction losses; inputs [B, H, W, C], scalar float32 output."""

import jax.numpy as jnp


def _diff(x, y):
  if x.shape != y.shape:
    raise ValueError(f"x and y must have the same shape; got {x.shape} and "
                     f"{y.shape}")
  return jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32)


def l1_loss(x, y):
  """mean |x - y|."""
  return jnp.mean(jnp.abs(_diff(x, y)))


def l2_loss(x, y):
  """mean (x - y)^2 (MSE)."""
  d = _diff(x, y)
  return jnp.mean(d * d)


def charbonnier_loss(x, y, *, eps=1e-3):
  """mean sqrt((x - y)^2 + eps^2)."""
  d = _diff(x, y)
  return jnp.mean(jnp.sqrt(d * d + eps * eps))
