"""Next-X generation (xAR, Ren et al. 2025): entity by entity, each entity a whole flow integration
conditioned on the entities generated before it; the whole loop is one `lax.scan` inside a jit.

B: batch, T: sequence positions, E: entities, D: token dimension. Callable:
  ``velocity_fn(x float32 [B', T, D], t float32 [B', T], cond) -> v [B', T, D]`` in the FlowHead
    convention (t = 1 noise, v = eps - x; `jaxtok.generators.xar.XAR.velocity` with cond = labels),
    block-causal at entity granularity (positions of entity e read only entities <= e).
  ``entity_ids``: int [T], the entity of each position (non-decreasing, 0..E-1).

AR step e (of E): positions of entities < e hold the generated tokens at time 0 (clean context, as
the release's sampler caches them), entity e starts from ``temperature`` * N(0, 1) noise and is
integrated by `flow.sample` (Euler or Heun, ``steps`` steps, ``shift``) from t = 1 to t = 0;
positions of later entities hold zeros, which the mask keeps from every position that matters.
Each flow step calls ``velocity_fn`` once on the whole sequence (twice per Heun step; guidance runs
cond and uncond as one doubled batch), so a sample costs E * steps calls with Euler.

Guidance: ``u + s (c - u)`` on the velocity at scale ``guidance.scale_at(cfg_schedule, cfg_scale,
r_e)`` with r_e = e / (E - 1) (the release: linear from 1 at the first entity to the full scale
at the last). The release integrates an SDE (Euler-Maruyama); this sampler integrates the ODE.

Keys: entity e's starting noise from ``fold_in(rng, e)``.
"""
import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.samplers import _checks, flow, guidance


def check_entity_ids(entity_ids) -> np.ndarray:
  """int32 [T] entity ids, non-decreasing from 0 with no gaps (ValueError otherwise)."""
  ids = np.asarray(entity_ids)
  if (ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer) or ids[0] != 0
      or np.any(np.diff(ids) < 0) or np.any(np.diff(ids) > 1)):
    raise ValueError(f"entity_ids must be a non-empty int [T] rising from 0 in steps of 0 or 1, "
                     f"got {entity_ids!r}")
  return ids.astype(np.int32)


def sample(rng, velocity_fn, *, batch, entity_ids, token_dim, steps, method="euler", shift=1.0,
           cond=None, uncond=None, cfg_scale=1.0, cfg_schedule="linear", cfg_power=1.0,
           temperature=1.0):
  """Generates the entity sequence float32 [B, T, D] (steps: flow steps per entity)."""
  _checks.positive_int("batch", batch)
  _checks.positive_int("token_dim", token_dim)
  _checks.positive_int("steps", steps)
  _checks.temperature(temperature)
  guidance.check_schedule(cfg_schedule)
  guidance.check_scale(cfg_scale)
  ids_np = check_entity_ids(entity_ids)
  num = int(ids_np[-1]) + 1
  ids = jnp.asarray(ids_np)
  shape = (batch, ids_np.size, token_dim)

  def body(seq, e):
    current = (ids == e)[None, :, None]
    # Model times: generated context 0 (clean), the current entity 1 - s, later entities 1.
    base_t = jnp.where(ids < e, 0.0, 1.0)

    def field(x, s, c):  # flow's convention (s = 0 noise): dx/ds = -v(x, t = 1 - s)
      t = jnp.where(ids == e, 1.0 - s, base_t)
      t = jnp.broadcast_to(t, x.shape[:2])
      v = velocity_fn(jnp.where(current, x, seq_for(x)), t, c)
      return jnp.where(current, -jnp.asarray(v, jnp.float32), 0.0)

    def seq_for(x):  # the context broadcast to x's batch (doubled under guidance)
      return jnp.concatenate([seq] * (x.shape[0] // seq.shape[0]), axis=0)

    x0 = jnp.where(current, temperature * jax.random.normal(jax.random.fold_in(rng, e), shape), seq)
    r = e / max(num - 1, 1)
    scale = guidance.scale_at(cfg_schedule, cfg_scale, r, cfg_power)
    new = flow.sample(field, x0, cond, steps=steps, method=method, shift=shift, uncond=uncond,
                      cfg_scale=scale)
    return jnp.where(current, new, seq), None

  seq, _ = jax.lax.scan(body, jnp.zeros(shape, jnp.float32), jnp.arange(num, dtype=jnp.int32))
  return seq
