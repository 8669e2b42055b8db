"""Hi-MAR generation: MAR's random-order loop (`samplers.mar`) twice, first over the low-resolution
pivots, then over the dense tokens given the generated pivots.

Callables (B batch, P pivots, N dense tokens, D token dimension, W condition width):
  ``pivot_condition_fn(pivots [B', P, D], mask [B', P], labels) -> z [B', P, W]``
  ``dense_condition_fn(dense [B', N, D], mask [B', N], (labels, pivots [B', P, D]))``
    ``-> z [B', N, W]``
  ``head_fn(x [M, D], t scalar, z [M, W], phase) -> velocity [M, D]`` in `flow`'s time convention
    (t = 0 noise); phase 0 pivots, 1 dense (the scale-aware head).
With guidance the pivots ride in the condition pytree, so `mar.sample`'s doubled batch carries
them to both halves. Each phase keeps MAR's cosine schedule, guidance schedule and DiSA options;
keys: pivots from ``fold_in(rng, 0)``, dense tokens from ``fold_in(rng, 1)``.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxtok.samplers import mar


class HiMARSample(NamedTuple):
  tokens: jax.Array  # float32 [B, N, D]
  pivots: jax.Array  # float32 [B, P, D]


def sample(rng, pivot_condition_fn, dense_condition_fn, head_fn, *, batch, num_pivots,
           num_tokens, token_dim, pivot_steps, steps, head_steps, pivot_head_steps=None,
           labels=None, uncond=None, **mar_kwargs):
  """Generates pivots (pivot_steps iterations) then dense tokens (steps iterations); returns
  `HiMARSample`. head_steps: `mar.sample`'s (an int, or one count per dense iteration for DiSA);
  pivot_head_steps: the same for the pivot iterations (None: head_steps, which must then be an
  int). labels / uncond: condition and unconditional ids [B] (uncond None: no guidance);
  mar_kwargs (cfg_scale, cfg_schedule, temperature, head_method, ...) go to both phases."""
  pivots = mar.sample(jax.random.fold_in(rng, 0), pivot_condition_fn,
                      lambda x, t, z: head_fn(x, t, z, 0), batch=batch, num_tokens=num_pivots,
                      token_dim=token_dim, steps=pivot_steps,
                      head_steps=head_steps if pivot_head_steps is None else pivot_head_steps,
                      cond=labels,
                      uncond=uncond, **mar_kwargs).tokens
  dense = mar.sample(jax.random.fold_in(rng, 1), dense_condition_fn,
                     lambda x, t, z: head_fn(x, t, z, 1), batch=batch, num_tokens=num_tokens,
                     token_dim=token_dim, steps=steps, head_steps=head_steps,
                     cond=(labels, pivots), uncond=None if uncond is None else (uncond, pivots),
                     **mar_kwargs).tokens
  return HiMARSample(dense, pivots)
