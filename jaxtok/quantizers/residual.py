"""Residual quantization: residual VQ (RVQ, SoundStream, arXiv 2107.03312, Algorithm 1) over
`jaxtok.quantizers.vq` codebooks, and residual FSQ (RFSQ) over symmetric FSQ grids.

Dimension names: N flattened vectors, D code dimension, Q number of levels (quantizers), K_i codebook
size of level i.

Level i quantizes the residual r_i = r_{i-1} - q_{i-1} (r_0 = x) and the reconstruction is
sum_i q_i. As in vector-quantize-pytorch's ResidualVQ (default quant_grad_frac = 0), the residual
passed on is detached from the codes (r_{i+1} = r_i - stop_gradient(q_i)): level i's losses reach the encoder through r_i (whose
gradient with respect to x is the identity) but never the earlier codebooks. The output is
straight-through overall, x + stop_gradient(sum q_i - x) (or the rotation trick applied to the sum),
so the reconstruction gradient reaches the encoder once, not once per level.

Quantize-dropout (training only): one number of levels n ~ U{dropout_start+1, ..., Q} is drawn per
call from `rng`; every level is still computed (static shapes, jit-friendly) but levels i >= n are
masked: their codes are left out of the sum, their indices are -1 and their losses 0. Per-level
metrics describe every level's choice, also for masked levels.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.quantizers import base
from jaxtok.quantizers import fsq
from jaxtok.quantizers import vq

sg = jax.lax.stop_gradient


# ----------------------------------------------------------------------------------------------------
# Shared pieces.


def _check_dropout(num_levels: int, *, train: Any, dropout: Any, dropout_start: Any,
                   rng: Any) -> bool:
  """Validates the dropout arguments; returns whether dropout is applied."""
  for name, value in (("train", train), ("dropout", dropout)):
    if not isinstance(value, (bool, np.bool_)):
      raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")
  start = base.check_positive_int("dropout_start", dropout_start, minimum=0)
  if start >= num_levels:
    raise ValueError(f"dropout_start must be < the number of levels {num_levels} (at least one level "
                     f"beyond it can be dropped), got {start}")
  applied = bool(train and dropout)
  if applied and rng is None:
    raise ValueError("rng must be a PRNG key when train=True and dropout=True, got None")
  return applied


def active_levels(rng: jax.Array | None, num_levels: int, *, dropout_start: int = 0,
                  applied: bool = True) -> jax.Array:
  """[Q] bool mask of the levels kept: arange(Q) < n with n ~ U{dropout_start+1..Q} (all if not applied)."""
  if not applied:
    return jnp.ones((num_levels,), bool)
  n = jax.random.randint(rng, (), dropout_start + 1, num_levels + 1, dtype=jnp.int32)
  return jnp.arange(num_levels) < n


def _summary_metrics(level_metrics: list[dict[str, jax.Array]], active: jax.Array,
                     x: jax.Array, total: jax.Array) -> dict[str, jax.Array]:
  metrics = {}
  for i, m in enumerate(level_metrics):
    for key, value in m.items():
      metrics[f"{key}/level{i}"] = value
  metrics["usage"] = jnp.mean(jnp.stack([m["usage"] for m in level_metrics]))
  metrics["perplexity"] = jnp.mean(jnp.stack([m["perplexity"] for m in level_metrics]))
  metrics["active_levels"] = jnp.sum(active.astype(jnp.float32))
  metrics["distortion"] = jnp.mean(jnp.sum(jnp.square(sg(x) - total), axis=-1))
  return metrics


def _check_level_indices(indices: Any, num_levels: int) -> None:
  base.check_int_array("indices", indices)
  if indices.ndim < 1 or indices.shape[-1] != num_levels:
    raise ValueError(f"indices must have shape [..., {num_levels}] (one index per level), got "
                     f"{tuple(indices.shape)}")


# ----------------------------------------------------------------------------------------------------
# RVQ over vq codebooks.


def _check_states(states: Any) -> tuple[list[vq.VQState], int]:
  if hasattr(states, "codebook"):
    raise TypeError("states must be a sequence of VQState (one per level), got a single VQState; "
                    "pass [state] for one level")
  if isinstance(states, (str, bytes)) or not isinstance(states, Sequence):
    raise TypeError(f"states must be a sequence of VQState (one per level), got {type(states).__name__}")
  if len(states) == 0:
    raise ValueError("states must hold at least one VQState, got an empty sequence")
  states = list(states)
  for i, state in enumerate(states):
    if not hasattr(state, "codebook"):
      raise TypeError(f"states[{i}] must be a VQState, got {type(state).__name__}")
    base.check_float_array(f"states[{i}].codebook", state.codebook, min_rank=2)
    if state.codebook.ndim != 2:
      raise ValueError(f"states[{i}].codebook must have shape [K, D], got {tuple(state.codebook.shape)}")
  d = states[0].codebook.shape[1]
  for i, state in enumerate(states):
    if state.codebook.shape[1] != d:
      raise ValueError(f"states[{i}].codebook must have dimension D = {d} (that of states[0]), got "
                       f"shape {tuple(state.codebook.shape)}")
  return states, d


def init_states(rng: jax.Array, num_levels: int, codebook_size: int, dim: int, *,
                scale: float = 1.0, cosine: bool = False) -> list[vq.VQState]:
  """Q fresh `vq.init_state` codebooks with independent keys (k-means init per level is advised:
  later residuals are much smaller than N(0, scale^2) codes)."""
  q = base.check_positive_int("num_levels", num_levels)
  return [vq.init_state(key, codebook_size, dim, scale=scale, cosine=cosine)
          for key in jax.random.split(rng, q)]


def rvq_quantize(z: jax.Array, states: Sequence[vq.VQState], *, rng: jax.Array | None = None,
                 train: bool = False, dropout: bool = False, dropout_start: int = 0,
                 **vq_kwargs: Any) -> base.QuantizerOutput:
  """Residual vector quantization with one `vq` codebook per level.

  Args:
    z: [..., D] floating (computed in float32).
    states: Q VQStates with codebooks [K_i, D] (sizes may differ between levels).
    rng: PRNG key; needed when train and dropout (quantize-dropout), otherwise optional.
    train: training mode (enables quantize-dropout when `dropout`).
    dropout: quantize-dropout (see the module docstring).
    dropout_start: the first `dropout_start + 1` levels are never dropped; in [0, Q).
    **vq_kwargs: passed to every level's `vq.quantize` (beta, codebook_weight, cosine,
      entropy_weight, ...). `rotation_trick=True` applies the rotation trick once, to the summed code.

  Returns:
    QuantizerOutput: codes [..., D] in z.dtype (value sum of the kept levels' codes; gradient
    straight-through or rotation trick), indices [..., Q] int32 (-1 for dropped levels), losses
    (vq's keys, summed over kept levels), metrics: `<key>/level<i>` for every vq metric of every
    level, usage and perplexity (means over levels), active_levels (n) and distortion
    (mean ||x - output||^2).
  """
  states, d = _check_states(states)
  base.check_float_array("z", z, min_rank=1, last_dim=d)
  base.check_finite("z", z)
  applied = _check_dropout(len(states), train=train, dropout=dropout, dropout_start=dropout_start,
                           rng=rng)
  for name in ("rng", "train"):
    if name in vq_kwargs:
      raise TypeError(f"{name} is an argument of rvq_quantize, not of the levels' vq_kwargs")
  rotation_trick = vq_kwargs.pop("rotation_trick", False)
  cosine = vq_kwargs.get("cosine", False)

  batch_shape = z.shape[:-1]
  x = z.reshape(-1, d).astype(jnp.float32)
  if rng is not None:
    drop_key, level_key = jax.random.split(rng)
  active = active_levels(drop_key if applied else None, len(states), dropout_start=dropout_start,
                         applied=applied)
  residual = x
  total = jnp.zeros_like(x)
  indices, losses, level_metrics = [], {}, []
  for i, state in enumerate(states):
    out = vq.quantize(residual, state, rng=None if rng is None else jax.random.fold_in(level_key, i),
                      train=train, rotation_trick=False, **vq_kwargs)
    # Exact code values (x + (q - x) is not always bitwise q in floating point).
    q = sg(vq.indices_to_codes(out.indices, state, cosine=cosine))
    kept = active[i]
    total = total + jnp.where(kept, q, 0.0)
    residual = residual - q
    indices.append(jnp.where(kept, out.indices, -1))
    for key, value in out.losses.items():
      losses[key] = losses.get(key, 0.0) + jnp.where(kept, value, 0.0)
    level_metrics.append(out.metrics)

  codes = vq.rotate_to(x, total) if rotation_trick else base.straight_through(x, total)
  metrics = _summary_metrics(level_metrics, active, x, total)
  return base.QuantizerOutput(
      codes=codes.reshape(batch_shape + (d,)).astype(z.dtype),
      indices=jnp.stack(indices, axis=-1).reshape(batch_shape + (len(states),)),
      losses=losses, metrics=metrics)


def rvq_indices_to_codes(indices: jax.Array, states: Sequence[vq.VQState], *,
                         cosine: bool = False) -> jax.Array:
  """Sum of the level codes: indices [..., Q] int (-1 = dropped level, contributes 0) -> [..., D]
  float32 (equal to `rvq_quantize(...).codes` in value, summed in the same order)."""
  states, d = _check_states(states)
  _check_level_indices(indices, len(states))
  total = jnp.zeros(indices.shape[:-1] + (d,), jnp.float32)
  for i, state in enumerate(states):
    idx = indices[..., i].astype(jnp.int32)
    q = vq.indices_to_codes(jnp.maximum(idx, 0), state, cosine=cosine)
    total = total + jnp.where((idx >= 0)[..., None], q, 0.0)
  return total


def rvq_residuals(z: jax.Array, indices: jax.Array, states: Sequence[vq.VQState], *,
                  cosine: bool = False) -> jax.Array:
  """The input each level quantized: [Q, ..., D] float32 with r_0 = z, r_i = r_{i-1} - q_{i-1}
  (gradient stopped). Feed level i's EMA / k-means / dead-code updates with (r_i, indices[..., i])."""
  states, d = _check_states(states)
  base.check_float_array("z", z, min_rank=1, last_dim=d)
  base.check_finite("z", z)
  _check_level_indices(indices, len(states))
  if tuple(indices.shape[:-1]) != tuple(z.shape[:-1]):
    raise ValueError(f"indices must have shape {tuple(z.shape[:-1]) + (len(states),)} (z's shape "
                     f"without D, plus Q), got {tuple(indices.shape)}")
  residual = sg(z.astype(jnp.float32))
  out = []
  for i, state in enumerate(states):
    out.append(residual)
    idx = indices[..., i].astype(jnp.int32)
    q = vq.indices_to_codes(jnp.maximum(idx, 0), state, cosine=cosine)
    residual = residual - jnp.where((idx >= 0)[..., None], q, 0.0)
  return jnp.stack(out)


def rvq_ema_update(states: Sequence[vq.VQState], z: jax.Array, indices: jax.Array, *,
                   decay: float = 0.99, eps: float = 1e-5, cosine: bool = False) -> list[vq.VQState]:
  """`vq.ema_update` of every level on its own residual (dropped levels, index -1, are ignored)."""
  residuals = rvq_residuals(z, indices, states, cosine=cosine)
  return [vq.ema_update(state, residuals[i], indices[..., i], decay=decay, eps=eps, cosine=cosine)
          for i, state in enumerate(list(states))]


# ----------------------------------------------------------------------------------------------------
# Residual FSQ.


def rfsq_scales(levels: Sequence[int], num_quantizers: int) -> np.ndarray:
  """[Q, D] float32 per-level scales L^-i (vector-quantize-pytorch's ResidualFSQ)."""
  levels = fsq.check_levels(levels, symmetric=True)
  q = base.check_positive_int("num_quantizers", num_quantizers)
  return (1.0 / _inverse_scales(levels, q)).astype(np.float32)


def _inverse_scales(levels: tuple[int, ...], q: int) -> np.ndarray:
  """[Q, D] float32 L^i (exact powers while L^i < 2^24)."""
  return np.asarray(levels, np.float64)[None, :] ** np.arange(q)[:, None]


def rfsq_quantize(z: jax.Array, levels: Sequence[int], num_quantizers: int, *,
                  rng: jax.Array | None = None, train: bool = False, dropout: bool = False,
                  dropout_start: int = 0) -> base.QuantizerOutput:
  """Residual FSQ (vector-quantize-pytorch's ResidualFSQ): symmetric FSQ grids at scales L^-i.

  The input is first squashed to x = tanh(z / c) c with c = 1 + 1/(L-1) per channel; level i
  quantizes v_i = clip(r_i L^i, -1, 1) to the symmetric grid of L points on [-1, 1] (the hard-clamp
  bound: digit = floor((L-1)(v+1)/2 + 0.5)) and contributes q_i = code_i / L^i. Each level roughly
  divides the error by L.

  Args:
    z: [..., D] floating (computed in float32).
    levels: D ints >= 2 (see `fsq.check_levels`), shared by all levels.
    num_quantizers: Q >= 1.
    rng, train, dropout, dropout_start: quantize-dropout, as in `rvq_quantize`.

  Returns:
    QuantizerOutput: codes [..., D] in z.dtype (value sum of kept levels; gradient straight-through
    around the rounding, i.e. through the tanh squash only), indices [..., Q] int32 (mixed radix per
    level as in `fsq`, -1 for dropped levels), losses {} (no loss), metrics as in `rvq_quantize`
    (per level from `fsq.grid_usage_metrics`; distortion against the squashed input).
  """
  levels = fsq.check_levels(levels, symmetric=True)
  q_count = base.check_positive_int("num_quantizers", num_quantizers)
  base.check_float_array("z", z, min_rank=1, last_dim=len(levels))
  base.check_finite("z", z)
  applied = _check_dropout(q_count, train=train, dropout=dropout, dropout_start=dropout_start,
                           rng=rng)

  batch_shape = z.shape[:-1]
  d = len(levels)
  lv = np.asarray(levels, np.float32)
  c = 1.0 + 1.0 / (lv - 1.0)
  x = jnp.tanh(z.reshape(-1, d).astype(jnp.float32) / c) * c
  active = active_levels(rng, q_count, dropout_start=dropout_start, applied=applied)
  inv_scales = _inverse_scales(levels, q_count).astype(np.float32)
  residual = sg(x)
  total = jnp.zeros_like(x)
  indices, level_metrics = [], []
  for i in range(q_count):
    v = jnp.clip(residual * inv_scales[i], -1.0, 1.0)
    digits = jnp.floor((lv - 1.0) * (v + 1.0) * 0.5 + 0.5).astype(jnp.int32)
    idx = fsq.digits_to_indices(digits, levels)
    q = fsq.indices_to_codes(idx, levels, symmetric=True) / inv_scales[i]
    kept = active[i]
    total = total + jnp.where(kept, q, 0.0)
    residual = residual - q
    indices.append(jnp.where(kept, idx, -1))
    level_metrics.append(fsq.grid_usage_metrics(idx, digits, levels))

  codes = base.straight_through(x, total)
  metrics = _summary_metrics(level_metrics, active, x, total)
  return base.QuantizerOutput(
      codes=codes.reshape(batch_shape + (d,)).astype(z.dtype),
      indices=jnp.stack(indices, axis=-1).reshape(batch_shape + (q_count,)),
      losses={}, metrics=metrics)


def rfsq_indices_to_codes(indices: jax.Array, levels: Sequence[int]) -> jax.Array:
  """Sum of the level codes: indices [..., Q] int (-1 = dropped level, contributes 0) -> [..., D]
  float32 (bitwise the value sum `rfsq_quantize` builds)."""
  levels = fsq.check_levels(levels, symmetric=True)
  base.check_int_array("indices", indices)
  if indices.ndim < 1:
    raise ValueError(f"indices must have shape [..., Q], got {tuple(indices.shape)}")
  q_count = indices.shape[-1]
  inv_scales = _inverse_scales(levels, q_count).astype(np.float32)
  total = jnp.zeros(indices.shape[:-1] + (len(levels),), jnp.float32)
  for i in range(q_count):
    idx = indices[..., i].astype(jnp.int32)
    q = fsq.indices_to_codes(jnp.maximum(idx, 0), levels, symmetric=True) / inv_scales[i]
    total = total + jnp.where((idx >= 0)[..., None], q, 0.0)
  return total
