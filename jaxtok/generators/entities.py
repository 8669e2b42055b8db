"""xAR's prediction entities over an h x w token grid (Ren et al. 2025, "Beyond Next-Token: Next-X
Prediction for Autoregressive Visual Generation"): pure NumPy index maths plus two jnp transforms.

The grid is the row-major token sequence of `generators.grid` (token (i, j) = index i * w + j). An
entity X is a group of tokens predicted together in one AR step; the model's sequence lists the
entities in generation order, each entity's tokens in row-major order:

  token      every token alone, raster order: E = N entities of 1 token (next-token prediction).
  cell       k x k squares of neighbouring tokens, cells in raster order (k divides h and w):
             E = (h/k)(w/k) entities of k^2 tokens. The release's default (2 x 2 cells of 8 x 8).
  subsample  the k^2 strided sub-grids {(i, j): i = a mod k, j = b mod k}, (a, b) in raster order:
             E = k^2 non-local entities of (h/k)(w/k) tokens.
  image      the whole grid at once: E = 1 (one flow over all tokens).
  scale      coarse-to-fine token maps: entity s is the grid average-pooled by f_s = 2^(S-1-s)
             (S scales, f from coarse to fine, the last f = 1 being the grid itself); k = S (0: as
             many as powers of two divide h and w). The sequence then holds sum_s (h/f_s)(w/f_s)
             positions, more than N; the generated grid is the last (finest) scale.

For every kind but scale, `Layout.gather` is a permutation of the N grid indices (each token in
exactly one entity, tested); `to_sequence` gathers, `from_sequence` scatters back. For scale,
`to_sequence` pools and `from_sequence` reads the finest map.

Dimension names: B batch, N = h w grid tokens, T sequence positions, E entities, D token dimension.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("token", "cell", "subsample", "scale", "image")


def _check(kind: str, h: int, w: int, k: int) -> None:
  if kind not in KINDS:
    raise ValueError(f"entity must be one of {KINDS}, got {kind!r}")
  if h < 1 or w < 1:
    raise ValueError(f"grid must be at least 1 x 1, got {h} x {w}")
  if kind in ("cell", "subsample") and (k < 1 or h % k or w % k):
    raise ValueError(f"entity {kind!r} needs entity_size k >= 1 dividing both grid sides "
                     f"{h} x {w}, got k={k}")


def groups(kind: str, h: int, w: int, k: int = 1) -> np.ndarray:
  """int64 [E, L]: the raster indices of entity e's tokens (row-major inside it), for every kind
  that partitions the grid (all but scale)."""
  _check(kind, h, w, k)
  idx = np.arange(h * w).reshape(h, w)
  if kind == "token":
    return idx.reshape(-1, 1)
  if kind == "image":
    return idx.reshape(1, -1)
  if kind == "cell":  # [h/k, k, w/k, k] -> cells (rows of cells, cols of cells) x (k, k)
    return idx.reshape(h // k, k, w // k, k).transpose(0, 2, 1, 3).reshape(-1, k * k)
  if kind == "subsample":  # [h/k, k, w/k, k] -> offsets (a, b) x strided positions
    return idx.reshape(h // k, k, w // k, k).transpose(1, 3, 0, 2).reshape(k * k, -1)
  raise ValueError("entity 'scale' is not a partition of the grid: use scale_factors")


def scale_factors(h: int, w: int, k: int = 0) -> tuple[int, ...]:
  """Pooling factors of the S scales, coarse to fine (..., 4, 2, 1); k = S (0: all powers of two
  dividing h and w)."""
  most = 1
  while h % (2 * most) == 0 and w % (2 * most) == 0:
    most *= 2
  count = most.bit_length()  # factors 1, 2, ..., most
  if k < 0 or k > count:
    raise ValueError(f"entity 'scale' on a {h} x {w} grid allows 1..{count} scales (entity_size 0 "
                     f"= all), got entity_size={k}")
  count = count if k == 0 else k
  return tuple(2 ** s for s in reversed(range(count)))


def avg_pool(grid: jax.Array, f: int) -> jax.Array:
  """[B, h, w, D] -> [B, h/f, w/f, D]: the mean of each f x f square."""
  b, h, w, d = grid.shape
  return grid.reshape(b, h // f, f, w // f, f, d).mean(axis=(2, 4))


@dataclasses.dataclass(frozen=True)
class Layout:
  """The sequence layout of one entity kind on an h x w grid (`k`: the cell / stride size, or the
  number of scales for "scale"; unused by token and image)."""
  kind: str
  h: int
  w: int
  k: int = 1

  def __post_init__(self):
    _check(self.kind, self.h, self.w, self.k)
    if self.kind == "scale":
      scale_factors(self.h, self.w, self.k)

  @property
  def factors(self) -> tuple[int, ...]:
    return scale_factors(self.h, self.w, self.k)

  @property
  def sizes(self) -> tuple[int, ...]:
    """Tokens per entity, in generation order."""
    if self.kind == "scale":
      return tuple((self.h // f) * (self.w // f) for f in self.factors)
    g = groups(self.kind, self.h, self.w, self.k)
    return (g.shape[1],) * g.shape[0]

  @property
  def num_entities(self) -> int:
    return len(self.sizes)

  @property
  def length(self) -> int:
    """T: sequence positions (N, or the total of all scales)."""
    return sum(self.sizes)

  @property
  def ids(self) -> np.ndarray:
    """int32 [T]: the entity of each sequence position (non-decreasing)."""
    return np.repeat(np.arange(self.num_entities), self.sizes).astype(np.int32)

  @property
  def positions(self) -> np.ndarray:
    """float32 [T, 2]: the (row, column) of each sequence position in grid-token units, the 2D RoPE
    positions of xAR: a grid token's own (i, j) for every kind but scale (the release rotates each
    token of its 2 x 2 cells by its own grid coordinates); for scale, the centre of the f x f block
    that coarse token (i, j) averages, (f i + (f - 1) / 2, f j + (f - 1) / 2), so every scale lies
    on the finest grid's coordinates (the release has no scale kind: our choice)."""
    if self.kind != "scale":
      return np.stack(np.divmod(self.gather, self.w), axis=-1).astype(np.float32)
    out = []
    for f in self.factors:
      i, j = np.divmod(np.arange((self.h // f) * (self.w // f)), self.w // f)
      out.append(np.stack([f * i, f * j], axis=-1) + (f - 1) / 2)
    return np.concatenate(out).astype(np.float32)

  @property
  def gather(self) -> np.ndarray:
    """int64 [N]: grid index at each sequence position (a permutation; not for scale)."""
    return groups(self.kind, self.h, self.w, self.k).reshape(-1)

  def to_sequence(self, tokens: jax.Array) -> jax.Array:
    """Grid tokens [B, N, D] -> entity sequence [B, T, D] (float32 for scale: pooled)."""
    b, n, d = tokens.shape
    if n != self.h * self.w:
      raise ValueError(f"tokens must be [B, {self.h * self.w}, D] for a {self.h} x {self.w} grid, "
                       f"got {tuple(tokens.shape)}")
    if self.kind != "scale":
      return tokens[:, self.gather]
    grid = tokens.astype(jnp.float32).reshape(b, self.h, self.w, d)
    return jnp.concatenate([avg_pool(grid, f).reshape(b, -1, d) for f in self.factors], axis=1)

  def from_sequence(self, seq: jax.Array) -> jax.Array:
    """Entity sequence [B, T, D] -> grid tokens [B, N, D] (scale: the finest map)."""
    if seq.shape[1] != self.length:
      raise ValueError(f"sequence must be [B, {self.length}, D], got {tuple(seq.shape)}")
    if self.kind == "scale":
      return seq[:, self.length - self.h * self.w:]
    return seq[:, np.argsort(self.gather)]


def block_causal_mask(ids: np.ndarray) -> np.ndarray:
  """bool [T, T] (True = may attend): query q sees key k iff entity(k) <= entity(q): all earlier
  entities and the whole of its own (xAR's causal mask at entity granularity)."""
  ids = np.asarray(ids)
  return ids[None, :] <= ids[:, None]


def teacher_forcing_mask(ids: np.ndarray) -> np.ndarray:
  """bool [2T, 2T] over [clean copy; noisy copy] of the sequence (the teacher-forcing ablation of
  Noisy Context Learning): clean slots are block causal among themselves; a noisy slot of entity e
  sees the clean slots of entities < e and the noisy slots of entity e, nothing else."""
  ids = np.asarray(ids)
  t = ids.shape[0]
  out = np.zeros((2 * t, 2 * t), bool)
  out[:t, :t] = block_causal_mask(ids)
  out[t:, :t] = ids[None, :] < ids[:, None]
  out[t:, t:] = ids[None, :] == ids[:, None]
  return out
