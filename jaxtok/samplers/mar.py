"""MAR-style random-order generation of continuous tokens (Li et al. 2024, "Autoregressive Image
Generation without Vector Quantization"; the loop of MAR's / DiSA's ``sample_tokens``).

B: batch, N: tokens, D: token dimension, W: condition width. Callables:
  ``condition_fn(tokens float32 [B', N, D], mask bool [B', N] (True = unknown), cond) -> z [B', N, W]``
    (`jaxtok.generators.mar.MAR.condition` with cond = labels; B' = B, or 2B with guidance)
  ``head_fn(x float32 [M, D], t float32 scalar, z [M, W]) -> velocity [M, D]`` in `flow`'s time
    convention (t = 0 noise). jaxtok's `FlowHead` uses t = 1 noise and per-row times: wrap it as
    ``flow.flip_time(lambda x, t, z: head(x, jnp.full((x.shape[0],), t), z))``.

Loop: a random order per sample (``argsort`` of uniforms from the order key); iteration s of S
reveals the next c_s positions of that order, where the number left masked follows the cosine
schedule (`schedules.mask_counts("cosine", N, S)`, MAR's floor(N cos(pi/2 (s+1)/S)) with at least one
token per iteration). The transformer sees the known tokens, the head then integrates a flow for
just the new positions (a static-size gather of max_s c_s rows per sample; unused rows are dropped
at the scatter), from noise scaled by ``temperature`` (the flow analogue of MAR's temperature on
the diffusion noise; 0 gives the deterministic ODE from x = 0).

Guidance: with ``uncond`` the transformer runs once on the doubled batch, and the head integrates
with CFG on the velocity at scale ``guidance.scale_at(cfg_schedule, cfg_scale, r_s)``, r_s = the
fraction of tokens known after iteration s (MAR's "linear": 1 + (g - 1)(N - mask_len) / N).

DiSA: ``head_steps`` is an int, or one count per iteration, e.g. ``schedules.disa_steps("linear",
S, 50, 5)``: the head then takes fewer steps as generation proceeds (traced step count).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.samplers import _checks, flow, guidance, schedules


class MARSample(NamedTuple):
  tokens: jax.Array  # float32 [B, N, D]
  order: jax.Array  # int32 [B, N]: order[b, j] = the position generated j-th
  step: jax.Array  # int32 [B, N]: the iteration that generated each position


def random_order(rng, batch, num_tokens):
  """A uniformly random permutation of positions per sample, int32 [B, N]."""
  return jnp.argsort(jax.random.uniform(rng, (batch, num_tokens)), axis=-1).astype(jnp.int32)


def _head_steps(head_steps, steps):
  arr = np.asarray(head_steps)
  if arr.ndim == 0:
    arr = np.full((steps,), _checks.positive_int("head_steps", head_steps))
  if arr.shape != (steps,) or not np.issubdtype(arr.dtype, np.integer) or arr.min() < 1:
    raise ValueError(f"head_steps must be an int >= 1 or {steps} ints >= 1 (one per iteration), "
                     f"got {head_steps!r}")
  return arr.astype(np.int32)


def sample(rng, condition_fn, head_fn, *, batch, num_tokens, token_dim, steps, head_steps,
           cond=None, uncond=None, cfg_scale=1.0, cfg_schedule="linear", cfg_power=1.0,
           temperature=1.0, head_method="euler", head_shift=1.0, head_sampler=None,
           cfg_min_masked=0):
  """Generates continuous tokens; returns `MARSample` (tokens float32 [B, N, D], order, step).

  steps in [1, N] iterations; head_steps an int or int [steps] (DiSA); temperature >= 0.
  Keys: order from ``fold_in(rng, 0)``, iteration s's head noise from ``fold_in(rng, s + 1)``.
  head_sampler: instead of the flow head, ``head_sampler(key, zc [M, W], zu [M, W] or None, scale)
  -> tokens float32 [M, D]`` draws the new tokens (TokenBridge's categorical channel head; head_fn
  and head_steps are then unused) with the key ``fold_in(rng, s + 1)``.
  cfg_min_masked: the guidance ratio r counts at least this many tokens as still masked (MAR's and
  MaskGen-KL's released loops clamp mask_len to >= 1 even at the last iteration, so their last
  scale is 1 + (g - 1)(N - 1) / N: pass 1); 0: r reaches 1 at the last iteration.
  """
  for name, v in (("batch", batch), ("num_tokens", num_tokens), ("token_dim", token_dim),
                  ("steps", steps)):
    _checks.positive_int(name, v)
  if steps > num_tokens:
    raise ValueError(f"steps must be <= num_tokens={num_tokens}, got {steps}")
  _checks.temperature(temperature)
  if (isinstance(cfg_min_masked, bool) or not isinstance(cfg_min_masked, (int, np.integer))
      or not 0 <= cfg_min_masked < num_tokens):
    raise ValueError(f"cfg_min_masked must be an int in [0, num_tokens={num_tokens}), got "
                     f"{cfg_min_masked!r}")
  guidance.check_schedule(cfg_schedule)
  guidance.check_scale(cfg_scale)
  hs = _head_steps(head_steps, steps)
  left = schedules.mask_counts("cosine", num_tokens, steps)  # masked after each iteration
  before = np.concatenate([[num_tokens], left[:-1]])
  start = (num_tokens - before).astype(np.int32)  # first order index revealed at iteration s
  count = (before - left).astype(np.int32)
  width = int(count.max())  # static rows per sample handed to the head
  b, n, d = batch, num_tokens, token_dim

  order = random_order(jax.random.fold_in(rng, 0), b, n)
  rank = jnp.argsort(order, axis=-1)  # rank[b, p] = when position p is generated
  guided = uncond is not None

  def body(carry, xs):
    tokens, step_of = carry
    s, s_start, s_count, s_head = xs
    mask = rank >= s_start
    if guided:
      zc, zu = guidance.call_pair(condition_fn, (tokens, mask), cond, uncond)
    else:
      zc, zu = condition_fn(tokens, mask, cond), None
    j = jnp.arange(width)
    valid = j < s_count
    pos = jnp.take_along_axis(order, jnp.minimum(s_start + j, n - 1)[None].repeat(b, 0), -1)
    rows = lambda z: jnp.take_along_axis(z, pos[..., None], 1).reshape(b * width, -1)
    r = jnp.minimum(s_start + s_count, n - cfg_min_masked) / n
    scale = guidance.scale_at(cfg_schedule, cfg_scale, r, cfg_power)
    key = jax.random.fold_in(rng, s + 1)
    if head_sampler is not None:
      new = head_sampler(key, rows(zc), None if zu is None else rows(zu), scale)
    else:
      x0 = temperature * jax.random.normal(key, (b * width, d))
      new = flow.sample(head_fn, x0, rows(zc), uncond=None if zu is None else rows(zu),
                        steps=s_head, method=head_method, shift=head_shift, cfg_scale=scale)
    # Rows beyond this iteration's count go to index n and are dropped.
    dest = jnp.where(valid[None], pos, n)
    bi = jnp.arange(b)[:, None]
    tokens = tokens.at[bi, dest].set(new.reshape(b, width, d), mode="drop")
    step_of = step_of.at[bi, dest].set(s, mode="drop")
    return (tokens, step_of), None

  init = (jnp.zeros((b, n, d), jnp.float32), jnp.full((b, n), -1, jnp.int32))
  xs = (jnp.arange(steps, dtype=jnp.int32), jnp.asarray(start), jnp.asarray(count), jnp.asarray(hs))
  (tokens, step_of), _ = jax.lax.scan(body, init, xs)
  return MARSample(tokens, order, step_of)
