"""Mask schedules (fraction of tokens still masked as a function of progress r in [0, 1])
and MaskGIT's per-step mask length (google-research/maskgit convention: gamma(r), with
gamma(0) = 1 and gamma(1) = 0).

K: number of tokens.
"""
import math

import numpy as np


def cosine(r):
  return np.cos(np.asarray(r, np.float64) * math.pi / 2)


def arccos(r):
  return np.arccos(np.asarray(r, np.float64)) / (math.pi / 2)


def linear(r):
  return 1.0 - np.asarray(r, np.float64)


def power(r, p):
  return 1.0 - np.asarray(r, np.float64) ** p


def get(name):
  """``"cosine" | "arccos" | "linear" | "pow:P"`` -> function of r."""
  if name == "cosine":
    return cosine
  if name == "arccos":
    return arccos
  if name == "linear":
    return linear
  if isinstance(name, str) and name.startswith("pow:"):
    p = float(name[4:])
    return lambda r: power(r, p)
  raise ValueError(f"schedule must be cosine, arccos, linear or pow:P, got {name!r}")


def _counts(fraction, unknown, steps):
  """Masked-after-step counts for `unknown` masked tokens, fraction [steps] float64."""
  counts, prev = [], unknown
  for s in range(steps):
    n = int(math.floor(float(fraction[s]) * unknown))
    n = max(n, steps - 1 - s)  # leave one per remaining step ...
    n = max(min(n, prev - 1), 0)  # ... but reveal at least one while any is left
    counts.append(n)
    prev = n
  return counts


def mask_counts(schedule, num_tokens, steps):
  """Number of tokens still masked after each step, int32 [steps] (static, host side).

  n_s = floor(num_tokens * gamma((s + 1) / steps)) (google-research/maskgit's mask_len), clamped so
  that every step reveals at least one token and, until the last step, keeps at least one masked
  per remaining step; the last step reveals everything (n = 0).
  """
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
    raise ValueError(f"steps must be an int >= 1, got {steps!r}")
  if steps > num_tokens:
    raise ValueError(f"steps must be <= num_tokens={num_tokens}, got {steps}")
  return mask_count_table(schedule, num_tokens, steps)[num_tokens]


def mask_count_table(schedule, max_tokens, steps):
  """Counts for every initial number of masked tokens u in [0, max_tokens]: int32 [max_tokens+1,
  steps], row u as `mask_counts` (for u < steps, one token is revealed per step until none is
  left). Samplers index it with a per-sample traced count, so per-sample schedules stay exact."""
  fn = get(schedule)
  fraction = [float(fn((s + 1) / steps)) for s in range(steps)]
  return np.asarray([_counts(fraction, u, steps) for u in range(max_tokens + 1)], np.int32)


DISA_STRATEGIES = ("constant", "linear", "cosine", "two-stage")


def disa_steps(strategy, num_iters, upper, lower):
  """Diffusion step annealing (DiSA, Zhao et al. 2025; Qinyu-Allen-Zhao/DiSA MAR_DiSA diffloss.py):
  the head's step count for each of `num_iters` generation iterations, int32 [num_iters].

  With K = num_iters and k the iteration: linear lower + int((K-1-k)/(K-1) (upper-lower));
  cosine lower + int((cos(pi k/(K-1)) + 1)/2 (upper-lower)); two-stage upper for k < K/2, then
  lower; constant lower. Later iterations, whose tokens are more constrained, get fewer steps
  (e.g. 50 -> 5 over 64 iterations). K = 1 gives [upper] (except constant).
  """
  if strategy not in DISA_STRATEGIES:
    raise ValueError(f"strategy must be one of {DISA_STRATEGIES}, got {strategy!r}")
  for name, v in (("num_iters", num_iters), ("upper", upper), ("lower", lower)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise ValueError(f"{name} must be an int >= 1, got {v!r}")
  if lower > upper:
    raise ValueError(f"lower must be <= upper={upper}, got {lower}")
  k = np.arange(num_iters, dtype=np.float64)
  span, last = upper - lower, max(num_iters - 1, 1)
  if strategy == "constant":
    out = np.full(num_iters, lower)
  elif strategy == "linear":
    out = lower + np.floor((num_iters - 1 - k) / last * span) if num_iters > 1 else [upper]
  elif strategy == "cosine":
    out = lower + np.floor((np.cos(math.pi * k / last) + 1) / 2 * span) if num_iters > 1 else [upper]
  else:
    out = np.where(k < num_iters / 2, upper, lower)
  return np.asarray(out, np.int32)
