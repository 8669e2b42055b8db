"""Consistency models in the discrete-time DDPM parameterisation of Latent Consistency Models.

Conventions (LCM, Luo et al. 2023, as in diffusers' `LCMScheduler`; Layton turns its latent
diffusion decoder into such a latent consistency decoder):
  * Forward process on integer timesteps t in [0, T) (T = 1000): x_t = sqrt(abar_t) x0 +
    sqrt(1 - abar_t) eps, with Stable Diffusion's "scaled_linear" betas
    (sqrt(beta) linear from sqrt(0.00085) to sqrt(0.012)), abar_t = prod_{s <= t} (1 - beta_s).
  * Consistency function f(x_t, t) = c_skip(t) x_t + c_out(t) x0_hat(x_t, t) with LCM's boundary
    coefficients on the scaled time u = timestep_scaling * t (10 t):
      c_skip(t) = sigma_data^2 / (u^2 + sigma_data^2),  c_out(t) = u / sqrt(u^2 + sigma_data^2),
    sigma_data = 0.5. At the boundary t = 0: c_skip = 1 and c_out = 0 exactly, so f(x, 0) = x.
  * Skipping-step solver grid: the N = 50 "origin" timesteps k-1, 2k-1, ..., T-1 (k = T / N = 20).
    Inference with s steps uses every (N // s)-th of them from the top (LCM's `set_timesteps`:
    s = 1 -> [999], s = 2 -> [999, 499], s = 4 -> [999, 759, 519, 279]).
  * Multistep sampling (LCM Algorithm 1): x <- x_T ~ N(0, I); for each timestep t_i: x0 = f(x, t_i);
    unless it is the last, x <- sqrt(abar_{t_{i+1}}) x0 + sqrt(1 - abar_{t_{i+1}}) z, z ~ N(0, I).

`sample` is model-agnostic: it takes the consistency function as a callable and the noise as a key.
Shapes: x [B, ...] float32; timesteps int32 [B] or Python ints.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0


def scaled_linear_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                                 beta_end: float = 0.012) -> np.ndarray:
  """abar float32 [T]: Stable Diffusion's "scaled_linear" betas (computed in float64)."""
  if num_train_timesteps < 2:
    raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
  if not 0.0 < beta_start < beta_end < 1.0:
    raise ValueError(f"need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
  betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64)**2
  return np.cumprod(1.0 - betas).astype(np.float32)


def boundary_coefficients(t: jax.Array, *, sigma_data: float = SIGMA_DATA,
                          timestep_scaling: float = TIMESTEP_SCALING) -> tuple[jax.Array, jax.Array]:
  """(c_skip, c_out) float32 with t's shape, LCM's discrete-time coefficients (module docstring).

  c_skip(0) = 1 and c_out(0) = 0 exactly (0 * anything = 0 in floating point)."""
  u = jnp.asarray(t, jnp.float32) * timestep_scaling
  c_skip = sigma_data**2 / (jnp.square(u) + sigma_data**2)
  c_out = u / jnp.sqrt(jnp.square(u) + sigma_data**2)
  return c_skip, c_out


def origin_timesteps(num_train_timesteps: int = 1000, num_origin_steps: int = 50) -> np.ndarray:
  """The solver grid int32 [N]: k-1, 2k-1, ..., N k - 1 with k = T // N (LCM: 19, 39, ..., 999)."""
  if not 1 <= num_origin_steps <= num_train_timesteps:
    raise ValueError(f"num_origin_steps must be in [1, {num_train_timesteps}], got {num_origin_steps}")
  k = num_train_timesteps // num_origin_steps
  return (np.arange(1, num_origin_steps + 1) * k - 1).astype(np.int32)


def inference_timesteps(num_steps: int, num_train_timesteps: int = 1000,
                        num_origin_steps: int = 50) -> tuple[int, ...]:
  """The s = num_steps sampling timesteps, descending (LCM's `set_timesteps`): every
  (N // s)-th origin timestep counted from the last."""
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
    raise TypeError(f"num_steps must be a Python int, got {type(num_steps).__name__}")
  if not 1 <= num_steps <= num_origin_steps:
    raise ValueError(f"num_steps must be in [1, {num_origin_steps}] (the solver grid), got {num_steps}")
  origin = origin_timesteps(num_train_timesteps, num_origin_steps)
  skip = len(origin) // num_steps
  return tuple(int(t) for t in origin[::-skip][:num_steps])


def add_noise(x0: jax.Array, noise: jax.Array, t: jax.Array, alphas_cumprod: jax.Array) -> jax.Array:
  """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, for t int [B] (or []) and x0/noise [B, ...]."""
  a = jnp.asarray(alphas_cumprod, jnp.float32)[jnp.asarray(t, jnp.int32)]
  a = jnp.reshape(a, a.shape + (1,) * (x0.ndim - a.ndim))
  return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise


def sample(consistency_fn: Callable[[jax.Array, jax.Array], jax.Array], x_init: jax.Array,
           timesteps: Sequence[int], rng: jax.Array, alphas_cumprod: jax.Array) -> jax.Array:
  """Multistep consistency sampling (module docstring): returns the last f(x, t_last), x's shape.

  Args:
    consistency_fn: (x [B, ...], t int32 [B]) -> x0 estimate [B, ...] float32.
    x_init: [B, ...] the start x_{t_0} (pure noise for generation).
    timesteps: descending Python ints (static: the loop unrolls; s is 1-4 for Layton).
    rng: key for the re-noising draws (one fold per step); unused when len(timesteps) == 1.
    alphas_cumprod: abar [T].
  With one timestep the result is consistency_fn(x_init, t_0) exactly.
  """
  if not timesteps:
    raise ValueError("timesteps must hold at least one timestep, got none")
  if any(b >= a for a, b in zip(timesteps, timesteps[1:])):
    raise ValueError(f"timesteps must be strictly descending, got {tuple(timesteps)}")
  b = x_init.shape[0]
  x = x_init
  x0 = None
  for i, t in enumerate(timesteps):
    x0 = consistency_fn(x, jnp.full((b,), t, jnp.int32))
    if i + 1 < len(timesteps):
      z = jax.random.normal(jax.random.fold_in(rng, i), x0.shape, jnp.float32)
      x = add_noise(x0, z, jnp.full((b,), timesteps[i + 1], jnp.int32), alphas_cumprod)
  return x0
