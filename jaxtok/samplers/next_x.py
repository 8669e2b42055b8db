"""Next-X generation (xAR, Ren et al. 2025): entity by entity, each entity a whole flow integration
conditioned on the entities generated before it; the whole loop is `lax.scan`s inside a jit.

Two paths with the same result (tested to float32 round-off):
  `sample_cached` (the default, what `eval.generate` runs): the clean context of the entities
    generated so far is fixed while entity e integrates, so its keys/values live in a KV cache.
    Each flow step runs only entity e's L_e tokens against the cache; once entity e is done, one
    call on its clean tokens at t = 0 writes its keys/values (the release's sampler does the same:
    its first flow step of entity e also appends entity e - 1's clean keys/values to the cache).
    A sample costs E * steps entity-sized calls plus E - 1 entity-sized prefills, instead of
    E * steps calls on the whole T-position sequence.
  `sample` (the reference): every flow step recomputes the whole sequence.

B: batch, T: sequence positions, E: entities, L: tokens of one entity, D: token dimension.
Callables:
  ``velocity_fn(x float32 [B', T, D], t float32 [B', T], cond) -> v [B', T, D]`` in the FlowHead
    convention (t = 1 noise, v = eps - x; `jaxtok.generators.xar.XAR.velocity` with cond = labels),
    block-causal at entity granularity (positions of entity e read only entities <= e).
  ``entity_ids``: int [T], the entity of each position (non-decreasing, 0..E-1).
  ``extend_fn(x float32 [B', L, D], t float32 [B', L], start, cache, cond) -> (v [B', L, D],
    cache)`` (`sample_cached`; `XAR.extend`): the velocity of one entity at positions
    start..start+L-1 given the cache of positions < start, and the cache with x's keys/values
    written; ``init_cache(batch) -> cache``.

AR step e (of E): positions of entities < e hold the generated tokens at time 0 (clean context, as
the release's sampler caches them), entity e starts from ``temperature`` * N(0, 1) noise and is
integrated from t = 1 to t = 0 by ``method``: "euler" / "heun" (`flow.sample`'s ODE, ``steps``
steps, ``shift``) or "sde" (`flow_sde.sample`, the release's Euler-Maruyama: ``steps`` velocity
calls on its grid linspace(1, ``sde_last_t``, steps) then 0, diffusion ``noise_scale`` * 2 t, the
last step drift only; ``noise_scale`` = 0 is the ODE's Euler on that grid);
positions of later entities hold zeros, which the mask keeps from every position that matters.
The reference calls ``velocity_fn`` once per flow step on the whole sequence (twice per Heun step;
guidance runs cond and uncond as one doubled batch, the cached path's cache holding both halves),
so a sample costs E * steps calls with Euler.

Guidance: ``u + s (c - u)`` on the velocity at scale ``guidance.scale_at(cfg_schedule, cfg_scale,
r_e)`` with r_e = e / (E - 1) (the release: linear from 1 at the first entity to the full scale
at the last). The release integrates the SDE (method "sde", its 0.04 last grid point and
noise_scale 1); the default here stays the ODE's Euler ("euler"), as before.

Keys: entity e's starting noise from ``fold_in(rng, e)``, and its SDE noise of step i from
``fold_in(fold_in(fold_in(rng, e), 1), i)``, both drawn for the whole [B, T, D] sequence and read at
e's positions, so both paths integrate every entity with the same noise.
"""
import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.samplers import _checks, flow, flow_sde, guidance

METHODS = ("euler", "heun", "sde")


def check_entity_ids(entity_ids) -> np.ndarray:
  """int32 [T] entity ids, non-decreasing from 0 with no gaps (ValueError otherwise)."""
  ids = np.asarray(entity_ids)
  if (ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer) or ids[0] != 0
      or np.any(np.diff(ids) < 0) or np.any(np.diff(ids) > 1)):
    raise ValueError(f"entity_ids must be a non-empty int [T] rising from 0 in steps of 0 or 1, "
                     f"got {entity_ids!r}")
  return ids.astype(np.int32)


def _check(batch, entity_ids, token_dim, steps, temperature, cfg_schedule, cfg_scale,
           method="euler", shift=1.0, noise_scale=0.0):
  """The checked entity ids int32 [T]."""
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  if method == "sde" and shift != 1.0:
    raise ValueError(f"method 'sde' runs the release's grid (no shift); got shift={shift}")
  if _checks.is_concrete(noise_scale) and not noise_scale >= 0:
    raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
  _checks.positive_int("batch", batch)
  _checks.positive_int("token_dim", token_dim)
  _checks.positive_int("steps", steps)
  _checks.temperature(temperature)
  guidance.check_schedule(cfg_schedule)
  guidance.check_scale(cfg_scale)
  return check_entity_ids(entity_ids)


def runs(entity_ids) -> list[tuple[int, int, int, int]]:
  """Maximal runs of consecutive entities of one size in checked ids [T]: (first entity, entities,
  tokens per entity L, first position), so each run scans with static shapes (one run for every
  kind but "scale", whose entities grow)."""
  sizes = np.bincount(entity_ids)
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  out = []
  for e, size in enumerate(sizes):
    if out and out[-1][2] == size:
      first, count, _, pos = out[-1]
      out[-1] = (first, count + 1, int(size), pos)
    else:
      out.append((e, 1, int(size), int(starts[e])))
  return out


def _integrate(velocity, x1, cond, noise_fn, *, steps, method, shift, uncond, cfg_scale,
               noise_scale, sde_last_t):
  """One entity's integration from x1 (t = 1) to t = 0 with ``velocity(x, t, c)`` in the t = 1 noise
  convention: the ODE (`flow.sample` on the flipped field) or the SDE (`flow_sde.sample`)."""
  if method == "sde":
    return flow_sde.sample(velocity, x1, cond, steps=steps, noise_scale=noise_scale,
                           last_t=sde_last_t, uncond=uncond, cfg_scale=cfg_scale, noise_fn=noise_fn)
  return flow.sample(flow.flip_time(velocity), x1, cond, steps=steps, method=method, shift=shift,
                     uncond=uncond, cfg_scale=cfg_scale)


def _sde_noise(rng, e, shape):
  """noise_fn(i) of entity e: N(0, 1) of the whole sequence's shape (module docstring, Keys)."""
  key = jax.random.fold_in(jax.random.fold_in(rng, e), 1)
  return lambda i: jax.random.normal(jax.random.fold_in(key, i), shape)


def sample(rng, velocity_fn, *, batch, entity_ids, token_dim, steps, method="euler", shift=1.0,
           cond=None, uncond=None, cfg_scale=1.0, cfg_schedule="linear", cfg_power=1.0,
           temperature=1.0, noise_scale=1.0, sde_last_t=flow_sde.LAST_T):
  """The reference path (whole-sequence recompute at every flow step): the entity sequence
  float32 [B, T, D] (steps: flow steps per entity; noise_scale, sde_last_t: method "sde" only)."""
  ids_np = _check(batch, entity_ids, token_dim, steps, temperature, cfg_schedule, cfg_scale,
                  method, shift, noise_scale)
  num = int(ids_np[-1]) + 1
  ids = jnp.asarray(ids_np)
  shape = (batch, ids_np.size, token_dim)

  def body(seq, e):
    current = (ids == e)[None, :, None]
    # Model times: generated context 0 (clean), the current entity t, later entities 1.
    base_t = jnp.where(ids < e, 0.0, 1.0)

    def velocity(x, t, c):  # t = 1 noise; only the current entity moves
      tt = jnp.broadcast_to(jnp.where(ids == e, t, base_t), x.shape[:2])
      v = velocity_fn(jnp.where(current, x, seq_for(x)), tt, c)
      return jnp.where(current, jnp.asarray(v, jnp.float32), 0.0)

    def seq_for(x):  # the context broadcast to x's batch (doubled under guidance)
      return jnp.concatenate([seq] * (x.shape[0] // seq.shape[0]), axis=0)

    x1 = jnp.where(current, temperature * jax.random.normal(jax.random.fold_in(rng, e), shape), seq)
    r = e / max(num - 1, 1)
    scale = guidance.scale_at(cfg_schedule, cfg_scale, r, cfg_power)
    new = _integrate(velocity, x1, cond, _sde_noise(rng, e, shape), steps=steps, method=method,
                     shift=shift, uncond=uncond, cfg_scale=scale, noise_scale=noise_scale,
                     sde_last_t=sde_last_t)
    return jnp.where(current, new, seq), None

  seq, _ = jax.lax.scan(body, jnp.zeros(shape, jnp.float32), jnp.arange(num, dtype=jnp.int32))
  return seq


def sample_cached(rng, extend_fn, init_cache, *, batch, entity_ids, token_dim, steps,
                  method="euler", shift=1.0, cond=None, uncond=None, cfg_scale=1.0,
                  cfg_schedule="linear", cfg_power=1.0, temperature=1.0, noise_scale=1.0,
                  sde_last_t=flow_sde.LAST_T):
  """The KV-cached path: the same entity sequence float32 [B, T, D] as `sample` (same keys, same
  guidance, same method), with flow steps over one entity's tokens only. Under guidance the cache
  holds the doubled batch [cond; uncond], whose contexts differ through the class embedding."""
  ids_np = _check(batch, entity_ids, token_dim, steps, temperature, cfg_schedule, cfg_scale,
                  method, shift, noise_scale)
  num = int(ids_np[-1]) + 1
  shape = (batch, ids_np.size, token_dim)
  doubled = uncond is not None
  pair = (lambda a: guidance.concat_batch(a, a)) if doubled else (lambda a: a)
  context_cond = guidance.concat_batch(cond, uncond) if doubled else cond
  cache = init_cache(batch * (2 if doubled else 1))
  pieces = []
  for first, count, size, pos in runs(ids_np):

    def body(cache, e, first=first, size=size, pos=pos):
      start = pos + (e - first) * size
      here = lambda a: jax.lax.dynamic_slice_in_dim(a, start, size, axis=1)  # e's positions

      def velocity(x, t, c):  # t = 1 noise, over entity e's tokens against the cache
        v, _ = extend_fn(x, jnp.broadcast_to(t, x.shape[:2]), start, cache, c)
        return jnp.asarray(v, jnp.float32)

      x1 = temperature * here(jax.random.normal(jax.random.fold_in(rng, e), shape))
      scale = guidance.scale_at(cfg_schedule, cfg_scale, e / max(num - 1, 1), cfg_power)
      whole_noise = _sde_noise(rng, e, shape)
      new = _integrate(velocity, x1, cond, lambda i: here(whole_noise(i)), steps=steps,
                       method=method, shift=shift, uncond=uncond, cfg_scale=scale,
                       noise_scale=noise_scale, sde_last_t=sde_last_t)

      def prefill(cache):  # the clean entity at t = 0: context of every later entity
        x = pair(new)
        return extend_fn(x, jnp.zeros(x.shape[:2], jnp.float32), start, cache, context_cond)[1]

      cache = jax.lax.cond(e < num - 1, prefill, lambda c: c, cache)
      return cache, new

    cache, ents = jax.lax.scan(body, cache, jnp.arange(first, first + count, dtype=jnp.int32))
    pieces.append(ents.transpose(1, 0, 2, 3).reshape(batch, count * size, token_dim))
  return jnp.concatenate(pieces, axis=1)
