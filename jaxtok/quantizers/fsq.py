"""Finite scalar quantization (FSQ, Mentzer et al. 2023, arXiv 2309.15505) and its symmetric variant
(arXiv 2411.19842, section 3.2).

Dimension names: N flattened vectors, D code dimension (= len(levels)), K = prod(levels) implicit
codebook size.

Each of the D channels is squashed into a bounded interval and rounded to one of L_i levels; the
codebook is the implicit grid of all level combinations, so there is nothing to learn and no loss:
`quantize(...).losses` is always an empty dict.

Two variants:
  * default (lucidrains' corrected form of the paper's released code): with eps = 1e-3,
      half_l = (L-1)(1+eps)/2,  offset = 0.5 if L even else 0,  shift = atanh(offset / half_l),
      bound(z) = tanh(z + shift) * half_l - offset,  code = round_ste(bound(z)) / (L // 2).
    Odd L gives {-1, ..., 0, ..., 1} in steps of 1/(L//2); even L gives the asymmetric grid
    {-1, -1 + 1/(L//2), ..., 1 - 1/(L//2)} (L=8: -1, -0.75, ..., 0.75). L = 2 is rejected: its shift
    atanh(0.5/0.5005) ~ 3.8 saturates tanh at z = 0 (use symmetric=True for binary channels).
  * symmetric=True: bracket = floor_ste((L-1)(tanh(z)+1)/2 + 0.5) in {0..L-1},
    code = 2 bracket/(L-1) - 1: L evenly spaced points on [-1, 1] including both ends
    (L=4: -1, -1/3, 1/3, 1; even L has no 0). Any L >= 2.

Indices are mixed radix with the FIRST dimension least significant (basis [1, L0, L0 L1, ...]), int32.
All arithmetic is float32 whatever the input dtype, and digits are rounded before the int cast: in
bf16 the index sum is wrong for most codes of a 15360-code grid.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.quantizers import base

sg = jax.lax.stop_gradient

EPS = 1e-3
# Codebooks up to this size get an exact histogram (usage, perplexity); larger ones per-dimension ones.
MAX_HISTOGRAM_CODES = 2**20
_MAX_CODES = 2**31


def check_levels(levels: Any, *, symmetric: bool = False) -> tuple[int, ...]:
  """Validates `levels` (static) and returns it as a tuple of Python ints.

  Raises:
    TypeError: levels is not a sequence of ints, or symmetric is not a bool.
    ValueError: levels is empty, some level is < 2, a level is 2 with symmetric=False, or
      prod(levels) >= 2**31 (indices would not fit int32).
  """
  if not isinstance(symmetric, (bool, np.bool_)):
    raise TypeError(f"symmetric must be a bool, got {type(symmetric).__name__} ({symmetric!r})")
  if isinstance(levels, np.ndarray):
    if levels.ndim != 1:
      raise ValueError(f"levels must be one-dimensional, got shape {levels.shape}")
    levels = list(levels)
  if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence):
    raise TypeError(f"levels must be a sequence of ints (e.g. (8, 5, 5, 5)), got "
                    f"{type(levels).__name__} ({levels!r})")
  if len(levels) == 0:
    raise ValueError("levels must hold at least one level, got an empty sequence")
  out = []
  for i, level in enumerate(levels):
    if isinstance(level, (bool, np.bool_)) or not isinstance(level, (int, np.integer)):
      raise TypeError(f"levels[{i}] must be an int, got {type(level).__name__} ({level!r}) in "
                      f"levels={tuple(levels)!r}")
    if level < 2:
      raise ValueError(f"levels[{i}] must be >= 2, got {level} in levels={tuple(levels)!r}")
    if level == 2 and not symmetric:
      raise ValueError(
          f"levels[{i}] = 2 needs symmetric=True: with symmetric=False the atanh shift of the bound "
          f"for L = 2 is atanh(0.5 / 0.5005) ~ 3.8, which saturates tanh at z = 0 "
          f"(levels={tuple(levels)!r})")
    out.append(int(level))
  size = math.prod(out)
  if size >= _MAX_CODES:
    raise ValueError(f"levels must have prod(levels) < 2**31 so that indices fit int32, got "
                     f"prod({tuple(out)}) = {size}")
  return tuple(out)


def codebook_size(levels: Sequence[int]) -> int:
  """K = prod(levels) (any levels >= 2 accepted, as for the symmetric variant)."""
  return math.prod(check_levels(levels, symmetric=True))


def _basis(levels: tuple[int, ...]) -> np.ndarray:
  """[D] int32 mixed-radix place values [1, L0, L0 L1, ...] (first dimension least significant)."""
  return np.cumprod((1,) + levels[:-1], dtype=np.int64).astype(np.int32)


def _half_width(levels: tuple[int, ...]) -> np.ndarray:
  return np.asarray([level // 2 for level in levels], np.float32)


def bound(z: jax.Array, levels: Sequence[int]) -> jax.Array:
  """The default variant's squashing: tanh(z + shift) * half_l - offset (see the module docstring).

  Args:
    z: [..., D] floating.
    levels: D ints >= 3.

  Returns:
    [..., D] float32 in (-(L//2) - eps', L - 1 - L//2 + eps'); bound(0) = 0 exactly for every L, and
    rounding it gives an integer in [-(L//2), L - 1 - L//2].
  """
  levels = check_levels(levels)
  base.check_float_array("z", z, min_rank=1, last_dim=len(levels))
  lv = np.asarray(levels, np.float64)
  half_l = (lv - 1) * (1 + EPS) / 2
  offset = np.where(lv % 2 == 0, 0.5, 0.0)
  shift = np.arctanh(offset / half_l)
  return (jnp.tanh(z.astype(jnp.float32) + shift.astype(np.float32)) * half_l.astype(np.float32)
          - offset.astype(np.float32))


def _digits_to_codes(digits: jax.Array, levels: tuple[int, ...], symmetric: bool) -> jax.Array:
  """Float digits in {0..L-1} -> float32 codes. Shared by quantize and indices_to_codes so that both
  produce bitwise the same numbers."""
  if symmetric:
    # One rounding (exact numerator, one division): codes are exactly symmetric, -c(d) = c(L-1-d).
    lm1 = np.asarray([level - 1 for level in levels], np.float32)
    return (2.0 * digits - lm1) / lm1
  hw = _half_width(levels)
  return (digits - hw) / hw


def digits_to_indices(digits: jax.Array, levels: Sequence[int]) -> jax.Array:
  """Per-dimension level indices [..., D] (ints in [0, L_i)) -> mixed-radix indices [...] int32."""
  levels = check_levels(levels, symmetric=True)
  base.check_int_array("digits", digits)
  if digits.ndim < 1 or digits.shape[-1] != len(levels):
    raise ValueError(f"digits must have shape [..., {len(levels)}], got {tuple(digits.shape)}")
  return jnp.sum(digits.astype(jnp.int32) * _basis(levels), axis=-1, dtype=jnp.int32)


def indices_to_digits(indices: jax.Array, levels: Sequence[int]) -> jax.Array:
  """Mixed-radix indices [...] -> per-dimension level indices [..., D] int32 in [0, L_i).

  Indices outside [0, K) are taken modulo K (floor semantics, so -1 gives the last code).
  """
  levels = check_levels(levels, symmetric=True)
  base.check_int_array("indices", indices)
  idx = indices.astype(jnp.int32)[..., None]
  return (idx // _basis(levels)) % np.asarray(levels, np.int32)


def quantize(z: jax.Array, levels: Sequence[int], *, symmetric: bool = False,
             rng: jax.Array | None = None, train: bool = False) -> base.QuantizerOutput:
  """Finite scalar quantization of the last axis of z.

  Args:
    z: [..., D] floating (bf16 inputs are computed in float32).
    levels: D static ints, the number of levels per channel (>= 3 for the default variant, >= 2 with
      symmetric=True), prod(levels) < 2**31. (8, 5, 5, 5) gives 1000 codes.
    symmetric: use the symmetric variant (arXiv 2411.19842).
    rng, train: accepted for the common quantizer interface; FSQ is deterministic and identical in
      both modes.

  Returns:
    QuantizerOutput with codes [..., D] in z.dtype (value: the grid point in [-1, 1]; gradient:
    straight-through the rounding, so d codes / d z = bound'(z) / (L//2), or
    (L-1) tanh'(z) / 2 * 2/(L-1) = tanh'(z) when symmetric), indices [...] int32 in [0, K),
    losses {} (FSQ has no loss), metrics {usage, perplexity, dim_usage}: exact over the K codes when
    K <= MAX_HISTOGRAM_CODES, otherwise `usage` is the mean per-dimension usage and `perplexity` the
    product of per-dimension perplexities (an upper bound of the joint one); dim_usage is always
    the mean over dimensions of the fraction of levels used.
  """
  levels = check_levels(levels, symmetric=symmetric)
  base.check_float_array("z", z, min_rank=1, last_dim=len(levels))
  base.check_finite("z", z)
  del rng, train
  x = z.astype(jnp.float32)
  if symmetric:
    lm1 = np.asarray([level - 1 for level in levels], np.float32)
    v = lm1 * (jnp.tanh(x) + 1.0) * 0.5 + 0.5
    # tanh is in [-1, 1] even after float rounding, so floor(v) is already in [0, L-1].
    digits = jnp.floor(sg(v))
    bracket = base.straight_through(v, digits)
  else:
    b = bound(x, levels)
    rounded = jnp.round(sg(b))
    digits = rounded + _half_width(levels)
    # straight_through returns the rounded integer itself, so the codes below equal
    # indices_to_codes(indices) bitwise.
    bracket = base.straight_through(b, rounded) + _half_width(levels)
  codes = _digits_to_codes(bracket, levels, symmetric)
  digits = digits.astype(jnp.int32)
  indices = digits_to_indices(digits, levels)
  metrics = grid_usage_metrics(indices, digits, levels)
  return base.QuantizerOutput(codes=codes.astype(z.dtype), indices=indices, losses={},
                              metrics=metrics)


def grid_usage_metrics(indices: jax.Array, digits: jax.Array,
                       levels: Sequence[int]) -> dict[str, jax.Array]:
  """Usage metrics of a product grid (also used by LFQ with levels (2,) * D).

  Args:
    indices: [...] int32 codes in [0, prod(levels)) (any bijective numbering of the grid).
    digits: [..., D] int32 per-dimension level indices of the same vectors.
    levels: D ints.

  Returns:
    dict of float32 scalars: usage and perplexity (exact histogram over the K codes when
    K <= MAX_HISTOGRAM_CODES; otherwise mean per-dimension usage and product of per-dimension
    perplexities), and dim_usage (mean over dimensions of the fraction of levels used).
  """
  levels = tuple(int(level) for level in levels)
  size = math.prod(levels)
  flat = digits.reshape(-1, len(levels))
  per_dim = [base.histogram_metrics(jnp.bincount(flat[:, i], length=level).astype(jnp.float32))
             for i, level in enumerate(levels)]
  dim_usage = jnp.mean(jnp.stack([m["usage"] for m in per_dim]))
  if size <= MAX_HISTOGRAM_CODES:
    metrics = dict(base.usage_metrics(indices, size))
  else:
    metrics = {"usage": dim_usage,
               "perplexity": jnp.prod(jnp.stack([m["perplexity"] for m in per_dim]))}
  metrics["dim_usage"] = dim_usage
  return metrics


def indices_to_codes(indices: jax.Array, levels: Sequence[int], *,
                     symmetric: bool = False) -> jax.Array:
  """Codes of mixed-radix indices: [...] int -> [..., D] float32 (bitwise equal to `quantize` codes).

  Concrete indices outside [0, K) raise ValueError; under jit they cannot be seen and are taken
  modulo K (`base.checkify_indices` turns that into a checkify error).
  """
  levels = check_levels(levels, symmetric=symmetric)
  base.check_int_array("indices", indices)
  base.check_indices("indices", indices, math.prod(levels))
  digits = indices_to_digits(indices, levels)
  return _digits_to_codes(digits.astype(jnp.float32), levels, symmetric)


def codes_to_indices(codes: jax.Array, levels: Sequence[int], *, symmetric: bool = False) -> jax.Array:
  """Grid codes [..., D] -> indices [...] int32 (float32 math, digits rounded before the int cast).

  Codes off the grid go to the nearest level per dimension (clipped to the grid).
  """
  levels = check_levels(levels, symmetric=symmetric)
  base.check_float_array("codes", codes, min_rank=1, last_dim=len(levels))
  x = codes.astype(jnp.float32)
  if symmetric:
    digits = (x + 1.0) * np.asarray([(level - 1) / 2 for level in levels], np.float32)
  else:
    hw = _half_width(levels)
    digits = x * hw + hw
  digits = jnp.clip(jnp.round(digits), 0, np.asarray(levels, np.float32) - 1).astype(jnp.int32)
  return digits_to_indices(digits, levels)


def implicit_codebook(levels: Sequence[int], symmetric: bool = False) -> jax.Array:
  """All K codes in index order: [K, D] float32 (row k = indices_to_codes(k))."""
  levels = check_levels(levels, symmetric=symmetric)
  return indices_to_codes(jnp.arange(math.prod(levels), dtype=jnp.int32), levels,
                          symmetric=symmetric)
