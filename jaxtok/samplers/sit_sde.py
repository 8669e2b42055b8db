"""SiT's default sampler for a velocity model on the linear path: Euler-Maruyama on the reverse SDE.

Time convention (SiT, Ma et al. 2024, `transport/` of willisma/SiT as GPSToken's release copies it
in `sample/`): t = 0 is noise, t = 1 is data, x_t = t x_1 + (1 - t) x_0, and the model predicts the
velocity v = x_1 - x_0. The linear path ("Linear", ICPlan) with a velocity model gives

  score(x, t)  = (t v - x) / (1 - t)        (`get_score_from_velocity`: alpha = t, sigma = 1 - t)
  D(t)         = (1 - t) / t                ("SBDM" diffusion with norm 1: alpha'/alpha sigma^2 -
                                              sigma sigma')
  drift(x, t)  = v + D score = 2 v - x / t

Euler-Maruyama (`sample_sde` with its defaults sampling_method="Euler", diffusion_form="SBDM",
diffusion_norm=1, last_step="Mean", last_step_size=0.04): the grid t_i = linspace(t0, t1, steps)
with t0 = 1e-3 (the release's floor for the SBDM SDE on the linear path) and t1 = 1 - 0.04; steps - 1
noisy steps x <- x + drift(x, t_i) dt + sqrt(2 D(t_i) dt) w at t_0 .. t_{steps-2}, then the
noise-free "Mean" step x <- x + drift(x, t1) 0.04 at t1 (it lands on t = 1).

`velocity_fn(x [B, ...] float32, t float32 scalar) -> v [B, ...]` (guidance, if any, is inside it).
The loop is one `lax.fori_loop`; step i draws its noise from fold_in(rng, i).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxtok.samplers import _checks

T_MIN = 1e-3  # the release's floor of t0 (SBDM diffusion blows up as 1 / t at t = 0)
LAST_STEP = 0.04  # SiT's default last_step_size (the stride of 250 steps over [0, 1], rounded)


def drift(v: jax.Array, x: jax.Array, t) -> jax.Array:
  """The reverse-SDE drift 2 v - x / t of the linear path with SBDM diffusion (module docstring)."""
  return 2.0 * v - x / t


def diffusion(t):
  """SBDM diffusion D(t) = (1 - t) / t of the linear path (norm 1)."""
  return (1.0 - t) / t


def grid(steps: int, *, t_min: float = T_MIN, last_step: float = LAST_STEP) -> jax.Array:
  """float32 [steps]: linspace(t_min, 1 - last_step, steps), the release's SDE times."""
  return jnp.linspace(t_min, 1.0 - last_step, steps, dtype=jnp.float32)


def sample(velocity_fn: Callable[[jax.Array, jax.Array], jax.Array], x0: jax.Array, rng: jax.Array,
           *, steps: int = 250, t_min: float = T_MIN, last_step: float = LAST_STEP) -> jax.Array:
  """Integrates the reverse SDE from noise x0 [B, ...] (t = t_min) to data; float32, x0's shape.

  steps: the release's num_steps (>= 2): steps - 1 Euler-Maruyama steps plus the last Mean step.
  """
  _checks.positive_int("steps", steps)
  if steps < 2:
    raise ValueError(f"steps must be >= 2 (steps - 1 noisy steps, then the last mean step), "
                     f"got {steps}")
  if not 0.0 < t_min < 1.0 - last_step < 1.0:
    raise ValueError(f"need 0 < t_min < 1 - last_step < 1, got t_min={t_min}, last_step={last_step}")
  ts = grid(steps, t_min=t_min, last_step=last_step)
  dt = ts[1] - ts[0]

  def body(i, x):
    t = ts[i]
    v = jnp.asarray(velocity_fn(x, t), jnp.float32)
    w = jax.random.normal(jax.random.fold_in(rng, i), x.shape, jnp.float32)
    return x + drift(v, x, t) * dt + jnp.sqrt(2.0 * diffusion(t) * dt) * w

  x = jax.lax.fori_loop(0, steps - 1, body, jnp.asarray(x0, jnp.float32))
  t1 = ts[-1]
  return x + drift(jnp.asarray(velocity_fn(x, t1), jnp.float32), x, t1) * last_step
