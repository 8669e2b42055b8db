"""Rectified-flow ODE sampling, Euler or Heun, with classifier-free or adaptive projected guidance.

Time convention of this module: t = 0 is noise, t = 1 is data, and we integrate dx/dt = v(x, t)
forward from t = 0. ``velocity_fn(x [B, ...] float32, t float32 scalar, cond) -> v [B, ...]``
(cond: any pytree with batch axis 0, passed through; None when unconditional).

The other convention: jaxtok's FlexTok decoder (`jaxtok.tokenizers.flextok`, the release's MinRF)
and MAR's `FlowHead` (`jaxtok.generators.heads`) use x_t = (1 - t) x + t eps with t = 1 noise and
predict v = eps - x, integrating from t = 1 down to 0. `flip_time` converts such a field:
s = 1 - t, dx/ds = -v(x, 1 - s). With shift = 1 and Euler, `sample(flip_time(f), noise, steps=T)`
takes exactly FlexTok's steps (t = 1, (T-1)/T, ..., 1/T; x <- x - v / T) (tested).

Guidance (pass ``uncond``): both conditions run as one 2B batch per evaluation and combine with
``guidance="cfg"`` (``u + s (c - u)``) or ``"apg"`` (`guidance.apg`, its momentum carried through
the loop and updated at every velocity evaluation, so twice per Heun step). ``cfg_scale`` may be
traced (e.g. a schedule value).

``steps`` may be a traced int32 scalar (DiSA anneals it inside a jitted loop): the loop is a
``lax.fori_loop`` over a dynamic bound, which lowers to a while loop.
"""
import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.samplers import _checks, guidance as G


def flip_time(velocity_fn):
  """Adapter from the t = 1 noise convention (FlexTok, FlowHead) to this module's t = 0 noise:
  returns ``(x, t, cond) -> -velocity_fn(x, 1 - t, cond)``."""
  def fn(x, t, cond):
    return -jnp.asarray(velocity_fn(x, 1.0 - t, cond), jnp.float32)
  return fn


def time_at(i, steps, shift=1.0):
  """Time float32 of grid point i of ``steps`` (i = 0: 0, i = steps: 1). shift > 1 spends more
  steps near t = 0, i.e. near noise (SD3's shift t' = t / (shift - (shift - 1) t))."""
  t = jnp.asarray(i, jnp.float32) / jnp.asarray(steps, jnp.float32)
  return t / (shift - (shift - 1.0) * t)


def timesteps(steps, shift=1.0):
  """float32 [steps + 1] from 0 to 1 (`time_at` on the whole grid)."""
  _checks.positive_int("steps", steps)
  if shift <= 0:
    raise ValueError(f"shift must be > 0, got {shift}")
  return time_at(jnp.arange(steps + 1), steps, shift)


def _check(steps, method, shift, guidance, uncond):
  if isinstance(steps, (int, np.integer, bool)):
    _checks.positive_int("steps", steps)
  elif _checks.is_concrete(steps) and int(steps) < 1:
    raise ValueError(f"steps must be >= 1, got {int(steps)}")
  if method not in ("euler", "heun"):
    raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
  if shift <= 0:
    raise ValueError(f"shift must be > 0, got {shift}")
  if guidance not in ("cfg", "apg"):
    raise ValueError(f"guidance must be 'cfg' or 'apg', got {guidance!r}")


def sample(velocity_fn, x0, cond=None, *, steps, method="euler", shift=1.0, uncond=None,
           cfg_scale=1.0, guidance="cfg", apg_eta=0.0, apg_norm_threshold=2.5, apg_momentum=-0.5):
  """Integrates dx/dt = v from x0 (noise, t = 0) to t = 1; returns x float32 with x0's shape.

  APG defaults are FlexTok's release values (eta 0, threshold 2.5, momentum -0.5).
  """
  _check(steps, method, shift, guidance, uncond)
  G.check_scale(cfg_scale)
  x0 = jnp.asarray(x0, jnp.float32)

  def velocity(x, t, avg):
    if uncond is None:
      return jnp.asarray(velocity_fn(x, t, cond), jnp.float32), avg
    c, u = G.call_pair(lambda x2, c2: velocity_fn(x2, t, c2), (x,), cond, uncond)
    if guidance == "cfg":
      return G.cfg_uncond_base(c, u, cfg_scale), avg
    return G.apg(c, u, cfg_scale, avg, eta=apg_eta, norm_threshold=apg_norm_threshold,
                 momentum=apg_momentum)

  def body(i, carry):
    x, avg = carry
    t0, t1 = time_at(i, steps, shift), time_at(i + 1, steps, shift)
    h = t1 - t0
    v0, avg = velocity(x, t0, avg)
    xe = x + h * v0
    if method == "euler":
      return xe, avg
    v1, avg = velocity(xe, t1, avg)
    return x + 0.5 * h * (v0 + v1), avg

  return jax.lax.fori_loop(0, steps, body, (x0, jnp.zeros_like(x0)))[0]
