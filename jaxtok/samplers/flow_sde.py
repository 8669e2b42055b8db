"""Euler-Maruyama sampling of a linear-path flow's reverse SDE (xAR's released sampler, after
SiT / REPA's `euler_maruyama_sampler`).

Convention of this module: the FlowHead / xAR one, x_t = (1 - t) x + t eps with t = 1 noise, and
``velocity_fn(x float32 [B, ...], t float32 scalar, cond) -> v = E[eps - x | x_t]`` (cond: any
pytree with batch axis 0, passed through). On this path the score follows from the velocity,
  s(x, t) = -((1 - t) v + x) / t,
and the reverse-time SDE with diffusion g(t)^2 = 2 t (the release's `compute_diffusion`) keeps the
marginals of the flow:
  dx = [v - (g^2 / 2) s] dt + g dW  (dt < 0)   <=>   drift = (1 + (1 - t)) v + x.
``noise_scale`` w multiplies g^2 in both places (drift correction and noise), so w = 1 is the
release and w = 0 is the probability-flow ODE (plain Euler on the same grid).

Time grid (the release's): ``steps`` points linspace(1, last_t, steps), then 0. Steps 0..steps-2
are Euler-Maruyama steps; the last one, from last_t to 0, moves by the drift only (no noise), as
there. A sample costs exactly ``steps`` velocity evaluations (the ODE's Euler does too). With
w = 0 and last_t = 1 / steps the grid is the uniform one of `flow.sample`'s Euler (tested equal to
float32 round-off).

Guidance (``uncond``): cond and uncond run as one 2B batch and combine as ``u + s (c - u)`` on the
velocity; the drift is affine in v (same x, t), so this equals the release's guidance on the drift.

Noise: step i adds sqrt(w g^2 |dt|) * ``noise_fn(i)`` (default: N(0, 1) of x's shape from
fold_in(rng, i)); a caller that must reproduce another caller's noise passes its own ``noise_fn``.
"""
import jax
import jax.numpy as jnp

from jaxtok.samplers import _checks
from jaxtok.samplers import guidance as G

LAST_T = 0.04  # the release's last grid point before 0


def times(steps: int, last_t: float = LAST_T) -> jax.Array:
  """float32 [steps + 1]: linspace(1, last_t, steps) then 0 (steps = 1: [1, 0])."""
  _checks.positive_int("steps", steps)
  if not 0.0 < last_t < 1.0:
    raise ValueError(f"last_t must be in (0, 1), got {last_t}")
  return jnp.concatenate([jnp.linspace(1.0, last_t, steps, dtype=jnp.float32),
                          jnp.zeros((1,), jnp.float32)])


def drift(v: jax.Array, x: jax.Array, t, noise_scale=1.0) -> jax.Array:
  """The reverse SDE's drift v - (w g^2 / 2) s for velocity v, state x (same shape), time t (scalar)
  and w = noise_scale, g^2 = 2 t, s = -((1 - t) v + x) / t: written without the division,
  (1 + w (1 - t)) v + w x."""
  return (1.0 + noise_scale * (1.0 - t)) * v + noise_scale * x


def sample(velocity_fn, x1, cond=None, *, rng=None, steps, noise_scale=1.0, last_t=LAST_T,
           uncond=None, cfg_scale=1.0, noise_fn=None):
  """Integrates the reverse SDE from x1 (noise, t = 1) to t = 0; returns float32 with x1's shape.

  rng: key of the per-step noise (required when noise_scale > 0 and noise_fn is None);
  noise_fn(i int32 scalar) -> N(0, 1) of x1's shape, the noise of step i (overrides rng).
  """
  grid = times(steps, last_t)
  if isinstance(noise_scale, (int, float)) and noise_scale < 0:
    raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
  G.check_scale(cfg_scale)
  x1 = jnp.asarray(x1, jnp.float32)
  if noise_fn is None:
    if rng is None:
      if not (isinstance(noise_scale, (int, float)) and noise_scale == 0):
        raise ValueError("flow_sde.sample needs rng (or noise_fn) when noise_scale > 0")
      noise_fn = lambda i: jnp.zeros_like(x1)
    else:
      noise_fn = lambda i: jax.random.normal(jax.random.fold_in(rng, i), x1.shape)

  def guided_drift(x, t):
    if uncond is None:
      v = jnp.asarray(velocity_fn(x, t, cond), jnp.float32)
    else:
      c, u = G.call_pair(lambda x2, c2: velocity_fn(x2, t, c2), (x,), cond, uncond)
      v = G.cfg_uncond_base(c, u, cfg_scale)
    return drift(v, x, t, noise_scale)

  def body(i, x):
    t0, t1 = grid[i], grid[i + 1]
    dt = t1 - t0
    diffusion = noise_scale * 2.0 * t0  # w g(t)^2
    return x + dt * guided_drift(x, t0) + jnp.sqrt(diffusion * -dt) * noise_fn(i)

  x = jax.lax.fori_loop(0, steps - 1, body, x1)
  t_last = grid[steps - 1]
  return x + (0.0 - t_last) * guided_drift(x, t_last)  # last step: the drift only
