"""Classifier-free guidance: combination formulas, scale schedules, APG, and the batched call.

Shapes: any; ``cond`` and ``uncond`` broadcast together; math in float32. The samplers use
``cfg_uncond_base`` (neutral scale 1); a scale w of the ``c + w (c - u)`` convention is s = 1 + w.

Scale schedules are functions of generation progress r in [0, 1] (each sampler documents its r) and
return a scale in the ``u + s (c - u)`` convention.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def check_scale(scale, name="cfg_scale"):
  """Raises ValueError naming `name` unless a concrete scale is finite (NaN/inf would turn every
  guided output into NaN without an error). A traced scale is not checked: under jit, wrap the
  sampler in `jax.experimental.checkify.checkify` and `checkify.check(jnp.isfinite(scale), ...)`
  before the call, or pass the scale as a Python float (it is then concrete here)."""
  if isinstance(scale, jax.core.Tracer):
    return
  with jax.ensure_compile_time_eval():
    value = np.asarray(scale, np.float64)
  if not np.all(np.isfinite(value)):
    raise ValueError(f"{name} must be a finite number, got {scale!r}")


def cfg_uncond_base(cond, uncond, scale):
  """``u + s (c - u)`` (LlamaGen / RAR / MAR / FlexTok). Neutral scale: 1.

  Evaluated as ``c + (s - 1)(c - u)``: the same number, but exactly ``c`` at s = 1, so guidance at
  its neutral scale reproduces the conditional model bit for bit.
  """
  check_scale(scale)
  c, u = _f32(cond), _f32(uncond)
  return c + (scale - 1.0) * (c - u)


def cfg_cond_base(cond, uncond, scale):
  """``c + s (c - u)`` (1d-tokenizer MaskGIT constant/linear, ReCAP). Neutral scale: 0."""
  check_scale(scale)
  c, u = _f32(cond), _f32(uncond)
  return c + scale * (c - u)


def cfg_instella(cond, uncond, scale):
  """``(1 + w) c - w u`` (Instella). Neutral scale: 0."""
  check_scale(scale)
  c, u = _f32(cond), _f32(uncond)
  return (1.0 + scale) * c - scale * u


# ---- scale schedules: (scale g, progress r) -> scale at r, u + s (c - u) convention ----

def constant_scale(scale, r):
  """g at every step (LlamaGen; MAR's "constant")."""
  del r
  return scale


def linear_scale(scale, r):
  """1 + (g - 1) r (MAR's "linear": r = fraction of tokens known after the step). Neutral at r=0."""
  return 1.0 + (scale - 1.0) * r


def power_cosine_scale(scale, r, power):
  """(g - 1)(1 - cos(pi r^power)) / 2 + 1 (MDT's power-cosine, as 1d-tokenizer's RAR and TiTok
  MaskGIT "power-cosine" use it, with r = step / steps). 1 at r=0, g at r=1; power 0 gives g."""
  rp = jnp.power(_f32(r), power) if power != 0 else 1.0
  return (scale - 1.0) * (1.0 - jnp.cos(math.pi * rp)) / 2.0 + 1.0


SCALE_SCHEDULES = ("constant", "linear", "power-cosine")


def check_schedule(name):
  if name not in SCALE_SCHEDULES:
    raise ValueError(f"cfg_schedule must be one of {SCALE_SCHEDULES}, got {name!r}")


def scale_at(schedule, scale, r, power=1.0):
  """The guidance scale float32 at progress r (scalar, may be traced) for a named schedule."""
  check_schedule(schedule)
  check_scale(scale)
  if schedule == "constant":
    return _f32(constant_scale(scale, r))
  if schedule == "linear":
    return _f32(linear_scale(scale, _f32(r)))
  return _f32(power_cosine_scale(scale, r, power))


# ---- adaptive projected guidance ----

def apg(cond, uncond, scale, average, *, eta=0.0, norm_threshold=2.5, momentum=-0.5):
  """Adaptive projected guidance (Sadat et al. 2024, arXiv 2410.02416), FlexTok's form.

  cond, uncond, average: float [B, ...]; the norm and the projection are per sample over all
  non-batch axes. With d = c - u: the momentum buffer average <- d + momentum * average (FlexTok's
  MomentumBuffer; the paper's beta, negative by default) replaces d; d is rescaled to norm <=
  norm_threshold (<= 0 or inf: no rescaling); d splits into d_par along c and d_orth = d - d_par;
  the result is ``c + (s - 1)(d_orth + eta d_par)``. FlexTok's release uses momentum -0.5, eta 0,
  norm_threshold 2.5 (its float64 projection runs in float32 here). With eta = 1, no threshold
  and momentum 0 this is ``cfg_uncond_base``.

  Returns (guided float32 [B, ...], new average float32 [B, ...]).
  """
  check_scale(scale)
  c, u = _f32(cond), _f32(uncond)
  axes = tuple(range(1, c.ndim))
  average = (c - u) + momentum * _f32(average)
  d = average
  if 0 < norm_threshold < math.inf:
    norm = jnp.sqrt(jnp.sum(jnp.square(d), axis=axes, keepdims=True))
    d = d * jnp.minimum(1.0, norm_threshold / jnp.maximum(norm, 1e-30))
  unit = c / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(c), axis=axes, keepdims=True)), 1e-30)
  par = jnp.sum(d * unit, axis=axes, keepdims=True) * unit
  return c + (scale - 1.0) * ((d - par) + eta * par), average


# ---- one batched call for cond and uncond ----

def concat_batch(a, b):
  """Concatenates two pytrees of arrays along axis 0 (cond first)."""
  return jax.tree.map(lambda x, y: jnp.concatenate([x, y], axis=0), a, b)


def call_pair(fn, args, cond, uncond):
  """Runs ``fn(*args2, cond2)`` once on the doubled batch, args and conditions stacked as
  [cond half; uncond half]; returns (output for cond [B, ...], output for uncond [B, ...]).

  args: tuple of arrays (or pytrees) with batch axis 0; cond, uncond: pytrees with batch axis 0.
  """
  b = jax.tree.leaves(args)[0].shape[0]
  out = fn(*[concat_batch(a, a) for a in args], concat_batch(cond, uncond))
  return jax.tree.map(lambda o: o[:b], out), jax.tree.map(lambda o: o[b:], out)
