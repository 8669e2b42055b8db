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


def mask_counts(schedule, num_tokens, steps):
  """Number of tokens still masked after each step, int [steps] (static, host side).

  Every step reveals at least one token and, until the last step, keeps at least one
  masked; the last step reveals everything.
  """
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  if steps > num_tokens:
    raise ValueError(f"steps must be <= num_tokens={num_tokens}, got {steps}")
  fn = get(schedule)
  counts, prev = [], num_tokens
  for s in range(steps):
    r = (s + 1) / steps
    n = int(math.floor(float(fn(r)) * num_tokens))
    n = min(n, prev - 1)  # reveal at least one
    n = max(n, steps - 1 - s)  # leave one per remaining step
    counts.append(n)
    prev = n
  return np.asarray(counts, np.int32)
