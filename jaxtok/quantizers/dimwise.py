"""Training-free dimension-wise quantization with Gaussian bins (TokenBridge, Wang et al. 2025).

Every latent dimension is quantized on its own, with L = 2**bits levels, so a token is D indices rather
than one code. The levels come from a standard normal, not from training:

  boundaries  b_0..b_L = Phi^-1(linspace(0, 1, L + 1)) clamped to [-r, r]     (r = std_range)
  values      v_k = E[X | b_k < X < b_{k+1}] = (phi(b_k) - phi(b_{k+1})) / (Phi(b_{k+1}) - Phi(b_k))

(Phi, phi: standard normal cdf and density.) A latent x is first brought to standard units,
s = clip((x - shift) / scale, -r, r), then given the index of the NEAREST value v_k (TokenBridge
`reconstruction.py post_training_quantize`: `argmin |s - v|`, not the Gaussian interval that holds s;
ties go to the lower index, as argmin). Nearest-value assignment is implemented as a binary search over
the midpoints m_k = (v_k + v_{k+1}) / 2: index = #{k : m_k < s}. The dequantized value is
v_index * scale + shift.

Two ways to choose (shift, scale):
  * `standard_normal(dim, value_range=R)`: TokenBridge's fixed map of [-R, R] onto [-r, r] for every
    dimension, shift = 0 and scale = R / r (R = 5, r = 3 in the release, which thus assumes latents of
    standard deviation 5/3 after MAR's KL-16 scaling of 0.2325). For 6 bits the outermost values are
    +-2.437 standard units = +-4.0618 latent units.
  * `fit(latents)`: per-dimension shift = mean and scale = standard deviation of a sample of latents,
    so each dimension is standardised by its own statistics before the same Gaussian bins.

The bins are computed once on the host in float64 with Python's `statistics.NormalDist` and `math.erfc`
(no scipy), then stored as float32: they match scipy's norm.ppf / truncated means to ~1e-7.

Degenerate bins: when 2**-bits < Phi(-r) (bits >= 10 for r = 3) several outer quantiles clamp to the
same +-r and their bins are empty; TokenBridge then divides by 1e-10 and gets the value 0 there. Here an
empty bin [a, a] gets the value a (the limit of the truncated mean), which keeps the values sorted; the
nearest-value rule never picks the higher-indexed copies of a repeated value.

Dimension names: N flattened vectors, D latent dimensions, L levels per dimension (2**bits).
"""
from __future__ import annotations

import math
import numbers
import statistics
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.quantizers import base

sg = jax.lax.stop_gradient

MAX_BITS = 16  # L = 65536 levels per dimension; more is far beyond what TokenBridge/CubiD use


class DimwiseSpec(NamedTuple):
  """Per-dimension Gaussian bins (a pytree of float32 arrays; passes through jit).

  Attributes:
    boundaries: [D, L-1] interior bin boundaries in standard units (Phi^-1(k/L) clamped to +-std_range),
      ascending. The outer boundaries are -+std_range. Kept to describe the bins; assignment uses the
      nearest value (see the module docstring).
    values: [D, L] reconstruction values (truncated-normal bin means) in standard units, ascending.
    shift: [D] latent value of standard unit 0.
    scale: [D] latent units per standard unit (> 0).
    std_range: [] float32 clip range r in standard units.
  """
  boundaries: jax.Array
  values: jax.Array
  shift: jax.Array
  scale: jax.Array
  std_range: jax.Array


# ----------------------------------------------------------------------------------------------------
# Argument checks.


def _check_real(name: str, value: Any, *, minimum: float | None = None) -> float:
  """Static positive real (> minimum), finite."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r})")
  value = float(value)
  if not np.isfinite(value):
    raise ValueError(f"{name} must be finite, got {value}")
  if minimum is not None and value <= minimum:
    raise ValueError(f"{name} must be > {minimum}, got {value}")
  return value


def _check_bits(bits: Any) -> int:
  bits = base.check_positive_int("bits", bits)
  if bits > MAX_BITS:
    raise ValueError(f"bits must be <= {MAX_BITS}, got {bits}")
  return bits


def check_spec(spec: Any) -> tuple[int, int]:
  """Validates a DimwiseSpec; returns (D, L)."""
  if not isinstance(spec, DimwiseSpec):
    raise TypeError(f"spec must be a DimwiseSpec, got {type(spec).__name__}")
  base.check_float_array("spec.values", spec.values, min_rank=2)
  if spec.values.ndim != 2 or spec.values.shape[1] < 2:
    raise ValueError(f"spec.values must have shape [D, L] with L >= 2, got {tuple(spec.values.shape)}")
  d, levels = spec.values.shape
  base.check_float_array("spec.boundaries", spec.boundaries, min_rank=2)
  if tuple(spec.boundaries.shape) != (d, levels - 1):
    raise ValueError(
        f"spec.boundaries must have shape ({d}, {levels - 1}), got {tuple(spec.boundaries.shape)}")
  for name in ("shift", "scale"):
    x = getattr(spec, name)
    base.check_float_array(f"spec.{name}", x)
    if tuple(x.shape) != (d,):
      raise ValueError(f"spec.{name} must have shape ({d},), got {tuple(x.shape)}")
  if not hasattr(spec.std_range, "shape") or tuple(spec.std_range.shape) != ():
    raise ValueError(f"spec.std_range must be a scalar array, got {spec.std_range!r}")
  return d, levels


# ----------------------------------------------------------------------------------------------------
# Bins.


def _ndtr64(x: float) -> float:
  """Standard normal cdf in float64 (erfc keeps the lower tail's relative precision)."""
  return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _ndtri64(p: np.ndarray) -> np.ndarray:
  """Standard normal quantile in float64 (the standard library's AS241 algorithm); -inf at p = 0."""
  inv = statistics.NormalDist().inv_cdf
  return np.array([-math.inf if q <= 0.0 else inv(q) for q in np.asarray(p, np.float64)], np.float64)


def gaussian_bins(bits: int, std_range: float = 3.0) -> tuple[jax.Array, jax.Array]:
  """Standard-normal quantile bins and their truncated-normal means.

  Args:
    bits: levels L = 2**bits, 1 <= bits <= 16.
    std_range: r > 0, the clamp on the quantiles (the outer boundaries are -r and r).

  Returns:
    boundaries: [L-1] float32 interior boundaries Phi^-1(k/L), k = 1..L-1, clamped to [-r, r].
    values: [L] float32 E[X | b_k < X < b_{k+1}] for X ~ N(0, 1), b_0 = -r, b_L = r (a for an empty
      bin [a, a]).
  """
  bits = _check_bits(bits)
  r = _check_real("std_range", std_range, minimum=0.0)
  levels = 2**bits
  half = levels // 2
  # Built once on the host in float64 (Python's statistics/math, no scipy) and mirrored from the lower
  # half, so the bins are exactly antisymmetric and accurate to float32 rounding: float32
  # jax.scipy.special ndtr/ndtri err by up to 1e-4 in the values at 10 bits, where narrow bins turn
  # small edge errors into large errors of the means.
  probs = np.arange(half + 1, dtype=np.float64) / levels
  raw = _ndtri64(probs)  # raw[0] = -inf, raw[-1] = 0
  lower = np.clip(raw, -r, r)
  a, b = lower[:-1], lower[1:]
  # Phi at the clamped edges: the exact k/L where the quantile was not clamped, Phi(-r) where it was.
  cdf = np.where(raw < -r, _ndtr64(-r), probs)
  mass = cdf[1:] - cdf[:-1]
  # exp(-a^2/2) - exp(-b^2/2) = sign(e) exp(-min(a^2, b^2)/2) (-expm1(-|e|)), e = (a^2 - b^2)/2:
  # expm1 avoids cancellation in the narrow bins near 0 and never overflows for wide ranges.
  e = 0.5 * (a - b) * (a + b)
  density = np.sign(e) * np.exp(-0.5 * np.minimum(np.square(a), np.square(b))) * np.expm1(-np.abs(e))
  with np.errstate(divide="ignore", invalid="ignore"):
    low_values = np.where(mass > 0, density / (np.sqrt(2.0 * np.pi) * mass), a)
  low_values = np.clip(low_values, a, b)
  edges = np.concatenate([lower, -lower[-2::-1]])
  values = np.concatenate([low_values, -low_values[::-1]])
  return jnp.asarray(edges[1:-1], jnp.float32), jnp.asarray(values, jnp.float32)


def _spec(dim: int, bits: int, std_range: float, shift: jax.Array, scale: jax.Array) -> DimwiseSpec:
  boundaries, values = gaussian_bins(bits, std_range)
  return DimwiseSpec(
      boundaries=jnp.broadcast_to(boundaries, (dim,) + boundaries.shape),
      values=jnp.broadcast_to(values, (dim,) + values.shape),
      shift=shift.astype(jnp.float32),
      scale=scale.astype(jnp.float32),
      std_range=jnp.asarray(std_range, jnp.float32))


def standard_normal(dim: int, *, bits: int = 6, std_range: float = 3.0,
                    value_range: float = 5.0) -> DimwiseSpec:
  """TokenBridge's bins: latents in [-value_range, value_range] map linearly onto [-std_range, std_range].

  Args:
    dim: D, number of latent dimensions (16 for MAR's KL-16 VAE).
    bits: L = 2**bits levels per dimension (TokenBridge default 6).
    std_range: r, clip range in standard units (TokenBridge 3.0).
    value_range: R, latent value mapped to r (TokenBridge 5.0, on latents already scaled by 0.2325).

  Returns:
    DimwiseSpec with shift 0 and scale R / r for every dimension.
  """
  dim = base.check_positive_int("dim", dim)
  r = _check_real("std_range", std_range, minimum=0.0)
  big_r = _check_real("value_range", value_range, minimum=0.0)
  return _spec(dim, bits, r, jnp.zeros((dim,)), jnp.full((dim,), big_r / r))


def fit(latents: jax.Array, *, bits: int = 6, std_range: float = 3.0) -> DimwiseSpec:
  """Gaussian bins standardised by each dimension's own mean and standard deviation.

  Args:
    latents: [N, D] (or [..., D], flattened) floating sample of latents; statistics in float32.
    bits: L = 2**bits levels per dimension.
    std_range: r, clip range in standard units.

  Returns:
    DimwiseSpec with shift = mean and scale = standard deviation (population, ddof 0) per dimension;
    a dimension of zero spread gets scale 1 (every sample then sits on the value nearest 0).
  """
  base.check_float_array("latents", latents, min_rank=2)
  if latents.shape[-1] < 1 or int(np.prod(latents.shape[:-1])) < 1:
    raise ValueError(f"latents must hold at least one vector of D >= 1, got shape {tuple(latents.shape)}")
  _check_bits(bits)
  r = _check_real("std_range", std_range, minimum=0.0)
  d = latents.shape[-1]
  x = latents.reshape(-1, d).astype(jnp.float32)
  mean = jnp.mean(x, axis=0)
  std = jnp.sqrt(jnp.mean(jnp.square(x - mean), axis=0))
  return _spec(d, bits, r, mean, jnp.where(std > 0, std, 1.0))


# ----------------------------------------------------------------------------------------------------
# Quantize.


def to_standard(z: jax.Array, spec: DimwiseSpec) -> jax.Array:
  """Latents [..., D] -> float32 standard units, clipped to [-std_range, std_range]."""
  s = (z.astype(jnp.float32) - spec.shift) / spec.scale
  return jnp.clip(s, -spec.std_range, spec.std_range)


def _nearest_value(s: jax.Array, values: jax.Array) -> jax.Array:
  """Index of the nearest value per dimension: s [..., D] float32, values [D, L] -> int32 [..., D]."""
  d = values.shape[0]
  midpoints = 0.5 * (values[:, 1:] + values[:, :-1])
  flat = s.reshape(-1, d).T  # [D, N]: one binary search per dimension
  # side="left" counts midpoints strictly below s, so s on a midpoint goes to the lower index (argmin).
  idx = jax.vmap(lambda m, x: jnp.searchsorted(m, x, side="left"))(midpoints, flat)
  return idx.T.reshape(s.shape).astype(jnp.int32)


def _per_dimension_metrics(indices: jax.Array, levels: int) -> dict[str, jax.Array]:
  """Usage and perplexity of each dimension's L-level histogram, averaged over D."""
  d = indices.shape[-1]
  flat = indices.reshape(-1, d) + jnp.arange(d, dtype=jnp.int32) * levels
  counts = jnp.bincount(flat.reshape(-1), length=d * levels).astype(jnp.float32).reshape(d, levels)
  per_dim = jax.vmap(base.histogram_metrics)(counts)
  return {name: jnp.mean(v) for name, v in per_dim.items()}


def quantize(z: jax.Array, spec: DimwiseSpec, *, rng: jax.Array | None = None,
             train: bool = False) -> base.QuantizerOutput:
  """Dimension-wise Gaussian-bin quantization (deterministic; no parameters are learnt).

  Args:
    z: [..., D] floating latents.
    spec: DimwiseSpec from `standard_normal` or `fit`.
    rng: unused (the quantizer is deterministic); accepted for the common quantizer signature.
    train: unused, likewise.

  Returns:
    QuantizerOutput with
      codes: [..., D] in z's dtype, the dequantized values v_index * scale + shift in value and the
        identity gradient to z (straight-through).
      indices: [..., D] int32 in [0, L).
      losses: {} (nothing to train).
      metrics: `usage` and `perplexity` of each dimension's level histogram (out of L), averaged over
        dimensions; float32 scalars.
  """
  del rng, train
  d, _ = check_spec(spec)
  base.check_float_array("z", z, last_dim=d)
  base.check_finite("z", z)
  return _quantize(z, spec)


@jax.jit  # one compiled program instead of dozens of eagerly dispatched ops; inlined under an outer jit
def _quantize(z: jax.Array, spec: DimwiseSpec) -> base.QuantizerOutput:
  indices = _nearest_value(to_standard(z, spec), spec.values)
  q = _dequantize(indices, spec)
  z32 = z.astype(jnp.float32)
  # q + (z - sg(z)) is exactly q in value (unlike z + sg(q - z)), with the identity gradient to z.
  codes = (q + (z32 - sg(z32))).astype(z.dtype)
  return base.QuantizerOutput(codes=codes, indices=indices, losses={},
                              metrics=_per_dimension_metrics(indices, spec.values.shape[1]))


def indices_to_codes(indices: jax.Array, spec: DimwiseSpec) -> jax.Array:
  """Dequantize: int indices [..., D] in [0, L) -> float32 latents [..., D] (v_index * scale + shift).

  Out-of-range indices are clamped to [0, L) (gather semantics); they are not checked at run time.
  """
  d, _ = check_spec(spec)
  base.check_int_array("indices", indices)
  if indices.ndim < 1 or indices.shape[-1] != d:
    raise ValueError(f"indices must have shape [..., {d}], got shape {tuple(indices.shape)}")
  return _dequantize(indices, spec)


@jax.jit
def _dequantize(indices: jax.Array, spec: DimwiseSpec) -> jax.Array:
  d, levels = spec.values.shape
  standard = spec.values[jnp.arange(d), jnp.clip(indices, 0, levels - 1)]
  return standard * spec.scale + spec.shift
