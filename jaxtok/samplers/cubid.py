"""CubiD generation: fill a [T, D] cube of masked level indices in a fixed number of steps.

B: batch, T positions, D dimensions, L levels. ``logits_fn(grid int32 [B', T, D]) -> logits
[B', T, D, L]`` (or ``logits_fn(grid, cond)``). The cube is flattened to T D elements and decoded
by the MaskGIT loop (`samplers.maskgit.sample`, one lax.scan, one model call per step, 2B rows
with guidance): every step samples all masked elements (temperature, top-k, top-p, CFG), then
keeps the schedule's count masked (`schedules.mask_count_table` over the T D elements, cosine by
default), re-masking either the least confident new elements (order="confidence", MaskGIT's
choice noise annealed by choice_temperature) or a uniformly random subset (order="random").
Elements given in the input (not the mask id) get confidence +inf and are never changed. The
number of steps does not grow with D (the paper's point: T_steps << T D).
"""
import jax.numpy as jnp

from jaxtok.samplers import maskgit

ORDERS = ("confidence", "random")


def sample(rng, logits_fn, grid, *, mask_id, steps, order="confidence", schedule="cosine",
           temperature=1.0, choice_temperature=4.5, top_k=None, top_p=None, cond=None,
           uncond=None, cfg_scale=1.0, cfg_schedule="constant"):
  """Fills every ``mask_id`` element of grid int32 [B, T, D].

  Returns (grid int32 [B, T, D], masked_counts int32 [steps, B]: elements still masked after each
  step). steps in [1, T D]; step s uses the key ``fold_in(rng, s)``.
  """
  if order not in ORDERS:
    raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
  grid = jnp.asarray(grid)
  if grid.ndim != 3:
    raise ValueError(f"grid must be [B, T, D], got shape {tuple(grid.shape)}")
  b, t, d = grid.shape

  def flat_fn(tokens, *rest):
    out = logits_fn(tokens.reshape(tokens.shape[0], t, d), *rest)
    return out.reshape(tokens.shape[0], t * d, out.shape[-1])

  out, counts = maskgit.sample(rng, flat_fn, grid.reshape(b, t * d), mask_id=mask_id, steps=steps,
                               schedule=schedule, temperature=temperature,
                               choice_temperature=choice_temperature, top_k=top_k, top_p=top_p,
                               cond=cond, uncond=uncond, cfg_scale=cfg_scale,
                               cfg_schedule=cfg_schedule, random_choice=order == "random")
  return out.reshape(b, t, d), counts
