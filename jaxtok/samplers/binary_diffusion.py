"""The binary-diffusion sampler of Instella-T2I (its release's "protocol 1"), one jit, `lax.fori_loop`.

Times t_i = (1 - i / S)^rho for i = 0..S-1 (t_0 = 1: start from uniform bits x ~ Bernoulli(1/2)).
Step i: the model's flip logits f at (x, t_i), divided by the temperature, guided when `uncond` is
given ((1 + w) f_c - w f_u, `guidance.cfg_instella`); p = sigmoid(f) is P(flip), so the predicted
P(x_0 = 1) is p0 = x (1 - p) + (1 - x) p. Unless it is the last step, x is redrawn from the forward
marginal at the next time with the predicted x_0: x ~ Bernoulli(p0 (1 - t_{i+1}) + t_{i+1} / 2); the
last step returns the thresholded prediction p0 > 1/2. S model calls (2 batch halves with guidance).

protocol 2 (the release's `protocal_2`): instead of the marginal, x is redrawn from the product of
the marginal at t_{i+1} given the predicted x_0 and a one-step kernel back to the current x,
normalised over {1, 0}:
  a_v = (p0_v (1 - t_{i+1}) + t_{i+1} / 2) * (x_v - (t_i - t_{i+1}) (x_v - 1/2)),  v in {1, 0},
  with p0_1 = p0, p0_0 = 1 - p0, x_1 = x, x_0 = 1 - x;   x ~ Bernoulli(a_1 / (a_1 + a_0)).

Checked against the release (Instella-T2I `models/diff_model.py BinaryDiffusion.sample`,
`test_diff.py`): times, start, temperature before guidance, guidance (1 + w) c - w u on the logits
(w = 7.5 in test_diff.py), protocol 1 and 2 and the thresholded last step: the same. The release's
guided batch is [cond; uncond] with the empty prompt as uncond; here the caller's `uncond`.

Dimension names: B batch, N tokens, n bits.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxtok.samplers import _checks, guidance


def times(steps: int, rho: float = 1.0) -> jax.Array:
  """float32 [S]: t_i = (1 - i / S)^rho."""
  return (1.0 - jnp.arange(steps, dtype=jnp.float32) / steps) ** rho


def protocol2_prob(p0: jax.Array, x: jax.Array, t: jax.Array, t_next: jax.Array) -> jax.Array:
  """P(next x = 1) of protocol 2 (module docstring) for P(x_0 = 1) = p0 and current bits x
  (float32, p0's shape)."""
  xf = x.astype(jnp.float32)
  step = t - t_next
  a1 = (p0 * (1.0 - t_next) + 0.5 * t_next) * (xf - step * (xf - 0.5))
  a0 = ((1.0 - p0) * (1.0 - t_next) + 0.5 * t_next) * ((1.0 - xf) - step * (0.5 - xf))
  return a1 / (a1 + a0)


def sample(rng: jax.Array, flip_logits_fn: Callable, shape: tuple[int, int, int], *, steps: int = 20,
           rho: float = 1.0, temperature: float = 1.0, cond: Any = None, uncond: Any = None,
           cfg_scale: float = 0.0, protocol: int = 1) -> jax.Array:
  """Bits int32 `shape` = [B, N, n].

  Args:
    rng: PRNG key.
    flip_logits_fn: (x int32 [B', N, n], t float32 [B'], cond) -> flip logits [B', N, n].
    shape: (B, N, n).
    steps: S >= 1.
    rho: time-spacing exponent (> 0; 1 = uniform).
    temperature: > 0, divides the logits.
    cond, uncond: conditions; with uncond, both halves run as one batch of 2B.
    cfg_scale: w of (1 + w) c - w u (Instella's convention; 0 = no guidance).
    protocol: 1 (redraw from the forward marginal) or 2 (marginal times the one-step kernel).
  """
  if protocol not in (1, 2):
    raise ValueError(f"protocol must be 1 or 2 (the release's protocal_1 / protocal_2), got "
                     f"{protocol!r}")
  steps = _checks.positive_int("steps", steps)
  _checks.temperature(temperature, allow_zero=False)
  if not rho > 0:
    raise ValueError(f"rho must be > 0, got {rho}")
  ts = times(steps, rho)
  r0, rng = jax.random.split(rng)
  x = jax.random.bernoulli(r0, 0.5, shape).astype(jnp.int32)

  def predict(x, t):
    tb = jnp.full((shape[0],), t)
    if uncond is None:
      return flip_logits_fn(x, tb, cond) / temperature
    c, u = guidance.call_pair(flip_logits_fn, (x, tb), cond, uncond)
    return guidance.cfg_instella(c / temperature, u / temperature, cfg_scale)

  def body(i, carry):
    x, rng = carry
    rng, key = jax.random.split(rng)
    p = jax.nn.sigmoid(predict(x, ts[i]).astype(jnp.float32))
    p0 = jnp.where(x > 0, 1.0 - p, p)
    t_next = ts[jnp.minimum(i + 1, steps - 1)]
    p_next = p0 * (1.0 - t_next) + 0.5 * t_next
    if protocol == 2:
      p_next = protocol2_prob(p0, x, ts[i], t_next)
    redrawn = jax.random.bernoulli(key, p_next).astype(jnp.int32)
    return jnp.where(i + 1 < steps, redrawn, (p0 > 0.5).astype(jnp.int32)), rng

  x, _ = jax.lax.fori_loop(0, steps, body, (x, rng))
  return x
