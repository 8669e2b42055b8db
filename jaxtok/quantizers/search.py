"""Nearest-code search: exact (arg)min / top-k of distances to a codebook, in bounded memory.

Dimension names: N query vectors, D code dimension, K codebook size, R rows of z per chunk,
B codes per codebook block, k neighbours.

Distances are computed in float32 with the highest matmul precision, so accelerator results equal a CPU
brute force. At most `max_block_elements` distance entries ([R, B]) exist at any time: z is cut into
strided row chunks (padded to equal size, mapped with `lax.map`; strided so that a batch sharding of z
is kept) and, when K alone exceeds the budget, the codebook is cut into blocks scanned with a running
(min, argmin) or running top-k. Ties resolve to the lowest code index, exactly as `jnp.argmin` /
`lax.top_k` on the full [N, K] matrix.

`nearest` is tuned further: its scores come from one augmented product [z, 1] . [-2c, bias] (no
separate bias pass), its argmin is two-level (`first_argmin`: vectorised float minima per group of
codes, then one group), and on CPU its blocks are L2-cache tiles of 128 rows x 4096 codes
(`plan_search`) rather than budget-sized ones. On a 2-core Xeon this made it 3x faster, under the time
of the plain [N, K] product (benchmarks/RESULTS.md).

Metrics:
  euclidean: squared distance ||z - c||^2 = ||z||^2 - 2 z.c + ||c||^2.
  cosine: z and codes l2-normalised first; the distance is the squared distance of the unit vectors,
    ||z/|z| - c/|c| ||^2 = 2 - 2 cos(z, c), in [0, 4] (so "sq_dist" means the same in both metrics).
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from jaxtok.quantizers import base

METRICS = ("euclidean", "cosine")
HIGHEST = jax.lax.Precision.HIGHEST
# Below this norm a vector is treated as zero when normalising (avoids 0/0 for cosine).
NORM_EPS = 1e-12


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """x / max(||x||, 1e-12) along `axis`, in x's dtype (zero vectors stay zero)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, NORM_EPS)


def check_metric(metric: str) -> str:
  if metric not in METRICS:
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
  return metric


def check_pair(z, codebook) -> None:
  """Validates z [N, D] and codebook [K, D] (floating, rank 2, same D)."""
  base.check_float_array("z", z, min_rank=2)
  base.check_float_array("codebook", codebook, min_rank=2)
  if z.ndim != 2:
    raise ValueError(f"z must have rank 2 (shape [N, D]), got shape {tuple(z.shape)}")
  if codebook.ndim != 2:
    raise ValueError(f"codebook must have rank 2 (shape [K, D]), got shape {tuple(codebook.shape)}")
  if z.shape[1] != codebook.shape[1]:
    raise ValueError(
        f"z and codebook must have the same last dimension D, got z shape {tuple(z.shape)} and "
        f"codebook shape {tuple(codebook.shape)}")
  if codebook.shape[0] < 1:
    raise ValueError(f"codebook must hold at least one code, got shape {tuple(codebook.shape)}")


def plan_blocks(n: int, k: int, max_block_elements: int) -> tuple[int, int]:
  """Chooses (R rows per chunk, B codes per block) with R * B <= max_block_elements.

  Whole codebook per block when it fits (then R = budget // K rows, balanced so the last chunk wastes
  little padding); otherwise square-ish blocks of about sqrt(budget) rows and budget // R codes.
  """
  n = max(n, 1)
  budget = max_block_elements
  if k <= budget:
    rows = min(n, max(1, budget // k))
    codes = k
  else:
    rows = min(n, max(1, math.isqrt(budget)))
    codes = max(1, budget // rows)
  return _balanced_rows(n, rows), codes


def _balanced_rows(n: int, rows: int) -> int:
  """At most `rows` rows per chunk, evened out so the last chunk wastes the least padding."""
  chunks = -(-n // rows)
  return -(-n // chunks)


# CPU search tiles: [R, B] score blocks of at most 2^19 float32 (2 MiB) stay in cache between the
# product and the reductions, and 128-row chunks amortise the product. On a 2-core Xeon (1 MiB L2 per
# core) tiles of 2^18 to 2^21 scores ran alike (53-57 ms for 16384 x 4096 codes); the default budget's
# 2^24-score blocks (64 MiB) would go through memory. Accelerators keep the memory budget's blocks.
CPU_TILE = 2**19
CPU_ROWS = 128
# Codes per group of the two-level argmin (`first_argmin`).
GROUP = 32


def plan_search(n: int, k: int, max_block_elements: int) -> tuple[int, int]:
  """(R rows per chunk, B codes per block) for `nearest`: `plan_blocks`, cache-sized on CPU."""
  if jax.default_backend() != "cpu" or max_block_elements <= CPU_TILE:
    return plan_blocks(n, k, max_block_elements)
  if k * min(n, CPU_ROWS) <= CPU_TILE:
    return plan_blocks(n, k, CPU_TILE)
  rows = _balanced_rows(n, min(n, CPU_ROWS))
  return rows, CPU_TILE // rows


def group_width(codes: int) -> int:
  """Group width W of `first_argmin`: the largest divisor of `codes` up to GROUP (1 for a prime)."""
  return max(w for w in range(1, min(GROUP, codes) + 1) if codes % w == 0)


def block_codes(codes: int, k: int) -> int:
  """Codes per block: all K, or a blocked size rounded down to a multiple of GROUP when possible."""
  if codes >= k or codes < GROUP:
    return min(codes, k)
  return codes - codes % GROUP


def first_argmin(s: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
  """(lowest index of the row minimum, the minimum) of s [R, C] with C a multiple of `width`.

  Equal to (jnp.argmin(s, -1), jnp.min(s, -1)) without NaN, but two-level so that only single-operand
  float min-reductions (which vectorise) touch all R x C scores: per-group minima [R, C/W], the row
  minimum, the first group holding it, then the first position inside that one group [R, W]. XLA's
  variadic (value, index) reduction behind jnp.argmin does not vectorise on CPU and was 3x slower.
  A row holding NaN gets index 0 and value NaN (jnp.argmin would point at the first NaN).
  """
  r, c = s.shape
  groups = c // width
  s3 = s.reshape(r, groups, width)
  group_min = jnp.min(s3, axis=-1)                                     # [R, G]
  best = jnp.min(group_min, axis=-1)                                   # [R]
  g = jnp.argmax(group_min == best[:, None], axis=-1).astype(jnp.int32)
  inside = jnp.take_along_axis(s3, g[:, None, None], axis=1)[:, 0]     # [R, W]
  w = jnp.argmax(inside == best[:, None], axis=-1).astype(jnp.int32)
  return g * width + w, best


def prepare(z: jax.Array, codebook: jax.Array, metric: str) -> tuple[jax.Array, jax.Array, jax.Array]:
  """float32 (z, codebook, ||c||^2) ready for `scores`; normalised for cosine."""
  z = z.astype(jnp.float32)
  codebook = codebook.astype(jnp.float32)
  if metric == "cosine":
    z = l2_normalize(z)
    codebook = l2_normalize(codebook)
  return z, codebook, jnp.sum(jnp.square(codebook), axis=-1)


def scores(z: jax.Array, codebook: jax.Array, code_sq_norm: jax.Array, metric: str) -> jax.Array:
  """[R, B] float32 scores whose argmin is the nearest code: sq_dist minus the per-row ||z||^2 term.

  euclidean: ||c||^2 - 2 z.c;  cosine: -2 z.c (unit vectors; the constant 2 is added back by
  `to_sq_dist`). Multiplying the codebook by -2 is exact in floating point, so it costs nothing in
  accuracy and saves a pass over the [R, B] block.
  """
  dots = jnp.matmul(z, (-2.0 * codebook).T, precision=HIGHEST)
  if metric == "cosine":
    return dots
  return dots + code_sq_norm[None, :]


def to_sq_dist(best_scores: jax.Array, z: jax.Array, metric: str) -> jax.Array:
  """Adds the row term back (||z||^2, or 2 for unit vectors) and clamps rounding below zero."""
  if metric == "cosine":
    row = 2.0
  else:
    row = jnp.sum(jnp.square(z), axis=-1)
    if best_scores.ndim == 2:
      row = row[:, None]
  return jnp.maximum(best_scores + row, 0.0)


def strided_chunks(x: jax.Array, rows: int) -> jax.Array:
  """[N, ...] -> [C, R, ...] (zero-padded to C * R rows), chunk c holding rows r * C + c.

  Strided rather than contiguous chunks: a batch sharding of N becomes a sharding of R inside every
  chunk, so under jit each device searches its own rows (contiguous chunks would make XLA all-gather z).
  """
  n = x.shape[0]
  chunks = -(-n // rows)
  pad = chunks * rows - n
  x = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
  return x.reshape((rows, chunks) + x.shape[1:]).swapaxes(0, 1)


def unstrided(x: jax.Array, n: int) -> jax.Array:
  """Inverse of `strided_chunks`: [C, R, ...] -> [N, ...]."""
  x = x.swapaxes(0, 1)
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])[:n]


def _map_rows(fn: Callable, z: jax.Array, rows: int):
  """Applies fn([R, D]) -> pytree of [R, ...] over row chunks of z, returning [N, ...]."""
  n = z.shape[0]
  if rows >= n:
    return fn(z)
  out = jax.lax.map(fn, strided_chunks(z, rows))
  return jax.tree.map(lambda a: unstrided(a, n), out)


def _code_blocks(codebook: jax.Array, code_sq_norm: jax.Array, codes: int):
  """Codebook [K, D] -> [nb, B, D], norms [nb, B] (padded codes get +inf norm, never chosen), offsets."""
  k, d = codebook.shape
  nb = -(-k // codes)
  pad = nb * codes - k
  cb = jnp.pad(codebook, ((0, pad), (0, 0))).reshape(nb, codes, d)
  cn = jnp.pad(code_sq_norm, (0, pad), constant_values=jnp.inf).reshape(nb, codes)
  valid = (jnp.arange(nb * codes) < k).reshape(nb, codes)
  offsets = jnp.arange(nb, dtype=jnp.int32) * codes
  return cb, cn, valid, offsets


def _validate(z, codebook, metric, max_block_elements) -> tuple[str, int]:
  check_pair(z, codebook)
  metric = check_metric(metric)
  max_block_elements = base.check_positive_int("max_block_elements", max_block_elements)
  return metric, max_block_elements


def nearest(z: jax.Array, codebook: jax.Array, *, metric: str = "euclidean",
            max_block_elements: int = 2**24) -> tuple[jax.Array, jax.Array]:
  """Index of and distance to the nearest code of every row of z.

  Args:
    z: [N, D] floating queries (any float dtype; computed in float32).
    codebook: [K, D] floating codes.
    metric: "euclidean" (squared L2) or "cosine" (squared L2 of unit vectors = 2 - 2 cos).
    max_block_elements: most distance entries held at once (R * B).

  Returns:
    indices: [N] int32, the lowest index among the closest codes (as jnp.argmin).
    sq_dist: [N] float32 distance to that code (clamped at 0).
  """
  metric, budget = _validate(z, codebook, metric, max_block_elements)
  return _nearest(z, codebook, metric=metric, budget=budget)


# Jitted bodies (checks stay in the Python wrappers): one compilation per shape and static setting when
# called eagerly; inlined when the caller is already jitted.
@functools.partial(jax.jit, static_argnames=("metric", "budget"))
def _nearest(z, codebook, *, metric, budget):
  z, codebook, cn = prepare(z, codebook, metric)
  n, k = z.shape[0], codebook.shape[0]
  rows, codes = plan_search(n, k, budget)
  codes = block_codes(codes, k)
  width = group_width(codes)
  # One augmented product gives the scores with no separate bias pass: [z, 1] . [-2c, bias].
  bias = jnp.zeros_like(cn) if metric == "cosine" else cn
  table = jnp.concatenate([-2.0 * codebook, bias[:, None]], axis=1)        # [K, D+1]
  za = jnp.concatenate([z, jnp.ones((n, 1), jnp.float32)], axis=1)        # [N, D+1]
  table, _, valid, offsets = _code_blocks(table, bias, codes)
  padded = table.shape[0] * codes

  def block_min(zr, tab, ok):
    s = jnp.matmul(zr, tab.T, precision=HIGHEST)
    if padded != k:  # padded codes are zero rows (score 0): never choose them
      s = jnp.where(ok[None, :], s, jnp.inf)
    return first_argmin(s, width)

  if table.shape[0] == 1:
    def chunk(zr):
      return block_min(zr, table[0], valid[0])
  else:
    def chunk(zr):
      def step(carry, block):
        best, best_idx = carry
        tab, ok, off = block
        idx, val = block_min(zr, tab, ok)
        # Strict < keeps the earlier (lower-index) block on ties.
        better = val < best
        return (jnp.where(better, val, best), jnp.where(better, idx + off, best_idx)), None

      init = (jnp.full((zr.shape[0],), jnp.inf, jnp.float32), jnp.zeros((zr.shape[0],), jnp.int32))
      (best, best_idx), _ = jax.lax.scan(step, init, (table, valid, offsets))
      return best_idx, best

  def chunk_with_dist(zr):
    idx, best = chunk(zr)
    return idx, to_sq_dist(best, zr[:, :-1], metric)

  return _map_rows(chunk_with_dist, za, rows)


def knn(z: jax.Array, codebook: jax.Array, k: int, *, metric: str = "euclidean",
        max_block_elements: int = 2**24) -> tuple[jax.Array, jax.Array]:
  """The k nearest codes of every row of z, nearest first.

  Args:
    z: [N, D] floating queries.
    codebook: [K, D] floating codes.
    k: number of neighbours, 1 <= k <= K (static).
    metric, max_block_elements: as in `nearest`. When the codebook is blocked, the running top-k adds
      [R, 2k] entries on top of each [R, B] block.

  Returns:
    indices: [N, k] int32, ordered by increasing distance, ties by increasing index (as lax.top_k).
    sq_dist: [N, k] float32 distances.
  """
  metric, budget = _validate(z, codebook, metric, max_block_elements)
  num_codes = codebook.shape[0]
  k = base.check_positive_int("k", k)
  if k > num_codes:
    raise ValueError(f"k must be in [1, K={num_codes}] (codebook size), got {k}")
  return _knn(z, codebook, k=k, metric=metric, budget=budget)


@functools.partial(jax.jit, static_argnames=("k", "metric", "budget"))
def _knn(z, codebook, *, k, metric, budget):
  num_codes = codebook.shape[0]
  z, codebook, cn = prepare(z, codebook, metric)
  n = z.shape[0]
  rows, codes = plan_blocks(n, num_codes, budget)

  if codes >= num_codes:
    def chunk(zr):
      neg, idx = jax.lax.top_k(-scores(zr, codebook, cn, metric), k)
      return idx.astype(jnp.int32), -neg
  else:
    cb, cnb, valid, offsets = _code_blocks(codebook, cn, codes)
    kb = min(k, codes)

    def chunk(zr):
      def step(carry, block):
        best_neg, best_idx = carry
        c, c_norm, ok, off = block
        neg = -scores(zr, c, c_norm, metric)
        neg = jnp.where(ok[None, :], neg, -jnp.inf)
        bneg, bidx = jax.lax.top_k(neg, kb)
        # Running entries come first and have lower indices than this block's, and each part is
        # ordered by (value desc, index asc); top_k prefers earlier positions on ties, so the merge
        # keeps the global lowest-index tie-break.
        all_neg = jnp.concatenate([best_neg, bneg], axis=-1)
        all_idx = jnp.concatenate([best_idx, bidx.astype(jnp.int32) + off], axis=-1)
        mneg, pos = jax.lax.top_k(all_neg, k)
        return (mneg, jnp.take_along_axis(all_idx, pos, axis=-1)), None

      r = zr.shape[0]
      init = (jnp.full((r, k), -jnp.inf, jnp.float32), jnp.zeros((r, k), jnp.int32))
      (best_neg, best_idx), _ = jax.lax.scan(step, init, (cb, cnb, valid, offsets))
      return best_idx, -best_neg

  def chunk_with_dist(zr):
    idx, best = chunk(zr)
    return idx, to_sq_dist(best, zr, metric)

  return _map_rows(chunk_with_dist, z, rows)
