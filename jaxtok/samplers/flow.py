"""Rectified-flow ODE sampling from t=0 (noise) to t=1 (data).

``velocity_fn(x [B, ...] float32, t float32 scalar, cond) -> v [B, ...]``.
"""
import jax
import jax.numpy as jnp


def timesteps(steps, shift=1.0):
  """float32 [steps + 1] from 0 to 1; shift > 1 spends more steps near t=0 (SD3-style shift)."""
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  if shift <= 0:
    raise ValueError(f"shift must be > 0, got {shift}")
  t = jnp.linspace(0.0, 1.0, steps + 1, dtype=jnp.float32)
  return t / (shift - (shift - 1.0) * t)


def sample(velocity_fn, x0, cond=None, *, steps, method="euler", shift=1.0):
  """Integrates dx/dt = v from x0; returns x at t=1 (float32, shape of x0)."""
  if method not in ("euler", "heun"):
    raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
  ts = timesteps(steps, shift)
  x0 = jnp.asarray(x0, jnp.float32)

  def body(x, i):
    t0, t1 = ts[i], ts[i + 1]
    h = t1 - t0
    v0 = velocity_fn(x, t0, cond)
    xe = x + h * v0
    if method == "euler":
      return xe, None
    v1 = velocity_fn(xe, t1, cond)
    return x + 0.5 * h * (v0 + v1), None

  return jax.lax.scan(body, x0, jnp.arange(steps))[0]
