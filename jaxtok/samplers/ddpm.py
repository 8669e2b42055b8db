"""Improved-DDPM Gaussian diffusion for per-token heads: the `DiffLoss` of MAR (Li et al. 2024) and
MaskGen-KL (Kim et al. 2025), i.e. openai/improved-diffusion's GaussianDiffusion + SpacedDiffusion
as carried by LTH14/mar and bytedance/1d-tokenizer `modeling/diffusion` (checked at its HEAD).

  schedule   cosine (Nichol & Dhariwal): alpha_bar(u) = cos((u + 0.008) / 1.008 * pi / 2)^2,
             beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999), T = 1000.
  respacing  `space_timesteps(T, "100")` keeps evenly strided steps; their betas are recomputed
             from alpha_bar at the kept steps; the head sees the ORIGINAL step index.
  head       head_fn(x_t float32 [M, D], t int32 [M] (original step in [0, T)), z [M, W]) ->
             float32 [M, 2D]: eps | v, v in [-1, 1] sets the log variance
             v' log(beta_t) + (1 - v') log(posterior variance clipped), v' = (v + 1) / 2
             ("learned range").
  loss       per row: mse(eps) + vb, vb = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) in bits
             (mean over D) with the eps half stopped (the variance learns from vb only), or the
             discretised Gaussian decoder NLL at t = 0 (LossType.MSE with learned sigma:
             "hybrid", not rescaled); t ~ U{0..S-1} over the loss schedule's S steps.
  sampling   ancestral from x ~ N(0, I) over the respaced steps, the per-step noise multiplied by
             `temperature` (MAR's temperature; the initial noise is not), none at the last step;
             classifier-free guidance on eps: u + s (c - u), the variance from the conditional row.

Tables are computed in float64 on the host and used in float32 (as the release extracts them).
Dimension names: M rows (tokens), D token dimension, W condition width, S kept steps.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.samplers import _checks, guidance


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> np.ndarray:
  """Improved DDPM's cosine schedule, float64 [T]."""
  _checks.positive_int("num_steps", num_steps)
  abar = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
  return np.asarray([min(1 - abar((i + 1) / num_steps) / abar(i / num_steps), max_beta)
                     for i in range(num_steps)], np.float64)


def space_timesteps(num_steps: int, section_counts: str | Sequence[int]) -> list[int]:
  """The kept original steps, sorted: `section_counts` like "100" or "10,15,20" (steps per equal
  section, strided evenly, ends included) or "ddimN" (a fixed integer stride giving N steps)."""
  if isinstance(section_counts, str):
    if section_counts.startswith("ddim"):
      want = int(section_counts[len("ddim"):])
      for stride in range(1, num_steps):
        if len(range(0, num_steps, stride)) == want:
          return list(range(0, num_steps, stride))
      raise ValueError(f"section_counts {section_counts!r}: no integer stride gives {want} of "
                       f"{num_steps} steps")
    try:
      section_counts = [int(c) for c in section_counts.split(",")]
    except ValueError:
      raise ValueError(f"section_counts must be like '100', '10,20' or 'ddim50', got "
                       f"{section_counts!r}") from None
  size_per, extra = divmod(num_steps, len(section_counts))
  start, steps = 0, []
  for i, count in enumerate(section_counts):
    size = size_per + (1 if i < extra else 0)
    if not 1 <= count <= size:
      raise ValueError(f"section_counts: cannot take {count} steps from a section of {size} "
                       f"(num_steps={num_steps})")
    stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
    steps += [start + round(j * stride) for j in range(count)]
    start += size
  return sorted(set(steps))


class Diffusion(NamedTuple):
  """Float32 tables [S] of the kept steps (numpy: static under jit) and the original index of each."""
  timestep_map: np.ndarray  # int32 [S]
  sqrt_alphas_cumprod: np.ndarray
  sqrt_one_minus_alphas_cumprod: np.ndarray
  sqrt_recip_alphas_cumprod: np.ndarray
  sqrt_recipm1_alphas_cumprod: np.ndarray
  posterior_mean_coef1: np.ndarray
  posterior_mean_coef2: np.ndarray
  posterior_log_variance_clipped: np.ndarray
  log_betas: np.ndarray

  @property
  def num_steps(self) -> int:
    return int(self.timestep_map.shape[0])


def make(num_steps: int = 1000, respacing: str | Sequence[int] | None = None) -> Diffusion:
  """The cosine diffusion of `num_steps`, respaced to `respacing` (None / "": every step)."""
  base = cosine_betas(num_steps)
  keep = list(range(num_steps)) if respacing in (None, "") else space_timesteps(num_steps, respacing)
  abar_all = np.cumprod(1.0 - base)
  abar = abar_all[keep]
  betas = 1.0 - abar / np.concatenate([[1.0], abar[:-1]])
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
  # The posterior variance is 0 at the first step: its log is clipped to the second step's.
  post_log = np.log(np.concatenate([post_var[1:2], post_var[1:]])) if len(keep) > 1 \
      else np.zeros(1)
  f32 = lambda a: np.asarray(a, np.float32)
  return Diffusion(
      timestep_map=np.asarray(keep, np.int32), sqrt_alphas_cumprod=f32(np.sqrt(abar)),
      sqrt_one_minus_alphas_cumprod=f32(np.sqrt(1.0 - abar)),
      sqrt_recip_alphas_cumprod=f32(np.sqrt(1.0 / abar)),
      sqrt_recipm1_alphas_cumprod=f32(np.sqrt(1.0 / abar - 1.0)),
      posterior_mean_coef1=f32(betas * np.sqrt(abar_prev) / (1.0 - abar)),
      posterior_mean_coef2=f32((1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar)),
      posterior_log_variance_clipped=f32(post_log), log_betas=f32(np.log(betas)))


def _at(table, t):
  return jnp.asarray(table)[t][:, None]


def q_sample(d: Diffusion, x0, t, noise):
  """x_t [M, D] of clean x0 [M, D] at kept steps t int32 [M] with noise [M, D]."""
  return _at(d.sqrt_alphas_cumprod, t) * x0 + _at(d.sqrt_one_minus_alphas_cumprod, t) * noise


def posterior(d: Diffusion, x0, x_t, t):
  """(mean, clipped log variance) [M, D] of q(x_{t-1} | x_t, x0)."""
  mean = _at(d.posterior_mean_coef1, t) * x0 + _at(d.posterior_mean_coef2, t) * x_t
  return mean, jnp.broadcast_to(_at(d.posterior_log_variance_clipped, t), x_t.shape)


def p_mean_variance(d: Diffusion, out, x_t, t):
  """(mean, log variance, predicted x0) [M, D] of p(x_{t-1} | x_t) from the head output out
  [M, 2D] (eps | v, learned range)."""
  eps, v = jnp.split(out.astype(jnp.float32), 2, axis=-1)
  frac = (v + 1) / 2
  log_var = frac * _at(d.log_betas, t) + (1 - frac) * _at(d.posterior_log_variance_clipped, t)
  x0 = _at(d.sqrt_recip_alphas_cumprod, t) * x_t - _at(d.sqrt_recipm1_alphas_cumprod, t) * eps
  return posterior(d, x0, x_t, t)[0], log_var, x0


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def discretized_gaussian_log_likelihood(x, means, log_scales):
  """log P(bin of x) elementwise, in nats, for data in [-1, 1] binned at 2/255 (the release's
  decoder term; tanh approximation of the normal cdf, open-ended edge bins)."""
  cdf = lambda u: 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (u + 0.044715 * u ** 3)))
  inv = jnp.exp(-log_scales)
  cdf_plus = cdf(inv * (x - means + 1.0 / 255.0))
  cdf_min = cdf(inv * (x - means - 1.0 / 255.0))
  log = lambda a: jnp.log(jnp.maximum(a, 1e-12))
  return jnp.where(x < -0.999, log(cdf_plus),
                   jnp.where(x > 0.999, log(1.0 - cdf_min), log(cdf_plus - cdf_min)))


def loss_terms(head_fn: Callable, d: Diffusion, x0, z, rng, *, t=None, noise=None) -> dict:
  """{"loss", "mse", "vb"} float32 [M] of the hybrid objective on clean rows x0 [M, D] with
  conditions z [M, W]; t (kept-step indices int32 [M]) and noise [M, D] drawn from rng unless
  given."""
  x0 = x0.astype(jnp.float32)
  rt, rn = jax.random.split(rng)
  if t is None:
    t = jax.random.randint(rt, (x0.shape[0],), 0, d.num_steps)
  if noise is None:
    noise = jax.random.normal(rn, x0.shape)
  x_t = q_sample(d, x0, t, noise)
  out = head_fn(x_t, jnp.asarray(d.timestep_map)[t], z).astype(jnp.float32)
  eps, v = jnp.split(out, 2, axis=-1)
  mse = jnp.mean((noise - eps) ** 2, axis=-1)
  # The variance learns from the bound only: the mean enters it through a stopped eps.
  mean, log_var, _ = p_mean_variance(d, jnp.concatenate([jax.lax.stop_gradient(eps), v], -1),
                                     x_t, t)
  true_mean, true_log_var = posterior(d, x0, x_t, t)
  kl = jnp.mean(normal_kl(true_mean, true_log_var, mean, log_var), -1) / math.log(2.0)
  nll = -jnp.mean(discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var), -1) / math.log(2.0)
  vb = jnp.where(t == 0, nll, kl)
  return {"loss": mse + vb, "mse": mse, "vb": vb}


def sample(head_fn: Callable, d: Diffusion, z, rng, *, token_dim: int, temperature=1.0,
           z_uncond=None, cfg_scale=1.0):
  """Tokens float32 [M, token_dim] for conditions z [M, W] by ancestral sampling over d's steps.

  z_uncond [M, W]: guidance (both conditions as one batch of 2M rows per step; cfg_scale may be
  traced). Keys: the start noise from fold_in(rng, S), step i's noise from fold_in(rng, i).
  """
  _checks.positive_int("token_dim", token_dim)
  _checks.temperature(temperature)
  m = z.shape[0]
  guided = z_uncond is not None
  zz = jnp.concatenate([z, z_uncond], 0) if guided else z

  def body(x, i):
    t = jnp.full((m,), i, jnp.int32)
    tt = jnp.full((zz.shape[0],), jnp.asarray(d.timestep_map)[i], jnp.int32)
    out = head_fn(jnp.concatenate([x, x], 0) if guided else x, tt, zz).astype(jnp.float32)
    if guided:
      eps = guidance.cfg_uncond_base(out[:m, :token_dim], out[m:, :token_dim], cfg_scale)
      out = jnp.concatenate([eps, out[:m, token_dim:]], -1)
    mean, log_var, _ = p_mean_variance(d, out, x, t)
    noise = jax.random.normal(jax.random.fold_in(rng, i), x.shape)
    return mean + (i > 0) * jnp.exp(0.5 * log_var) * noise * temperature, None

  x = jax.random.normal(jax.random.fold_in(rng, d.num_steps), (m, token_dim))
  x, _ = jax.lax.scan(body, x, jnp.arange(d.num_steps - 1, -1, -1, dtype=jnp.int32))
  return x
