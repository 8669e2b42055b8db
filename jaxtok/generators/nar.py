"""NAR, next-neighbour autoregression (He et al. 2025): decode the token grid in ascending Manhattan
distance from the top-left start token, every token of one distance in the same step.

The tokens [B, N] are an h x w grid (`generators.grid`, row-major). Token (i, j) has distance
d = i + j; the D = h + w - 1 diagonals are decoded one per model call (the condition's call gives
diagonal 0), so an n x n grid takes 2n - 1 calls instead of n^2.

Dimension-oriented heads (the paper's "horizontal" and "vertical" heads, as in its released code): the
transformer's output at token (i, j) feeds two heads, each with its own RMSNorm and Dense: the
horizontal head (the trunk's own norm + head) predicts the right neighbour (i, j + 1), the vertical
head predicts the neighbour below (i + 1, j). The logits of a token are
  (0, 0):             the mean of both heads at the condition slot,
  (0, j), j > 0:      horizontal head at (0, j - 1),
  (i, 0), i > 0:      vertical head at (i - 1, 0),
  (i, j), i, j > 0:   the mean of the horizontal head at (i, j - 1) and the vertical head at (i - 1, j)
(the released code averages the two heads' logits where both neighbours exist, in training and in
sampling alike). Every token but the last feeds a prediction, so one teacher-forced pass over
[cond, t_0, ..., t_{N-1}] (N + 1 positions) trains all tokens.

Positions (`rope`): "2d" (configs/nar_vqgan.py's choice, the paper's and the release's, LlamaGen's
`precompute_freqs_cis_2d`): token (i, j) rotated by its row i in the first half of each head's
channels and its column j in the second, theta 10000, E/4 frequencies theta^(-4i/E) per half
(`nn.rope.rope_2d`). The condition sits at (0, 0) (see the differences below). "1d" is the model
before this option: sequence positions 0..N (condition 0, raster token r at r + 1); both have the
same parameters, so a checkpoint loads under either, with different numerics; "1d" stays the
constructor's default so that a stored config written before the option existed (no `rope` key)
rebuilds the model it trained.

Differences from the release: its 2D table gives the condition slot cos = sin = 0, which zeroes the
condition's query and key (every token's score with the condition is 0 and only its value counts);
a rotation cannot zero a vector, so here the condition is rotated at (0, 0) and keeps its key. RoPE
pairs channel i with i + E/4 inside each half where the release pairs 2i with 2i + 1: the same
rotation up to a fixed permutation of the head's channels (of the qkv weights).

Near-causal mask (`near_causal_mask`): the condition has distance -1; a query of distance d sees every
key of distance <= d: all smaller distances and the other tokens of its own diagonal, which are known
when it runs (they are decoded together one step earlier). Its outputs predict distance d + 1 only, so
no token sees what it predicts.

Sampling (`jaxtok.samplers.neighbor`) keeps the KV cache diagonal-major: slot 0 the condition, then
diagonal d in slots 1 + d L .. 1 + d L + L - 1 (L = min(h, w), the longest diagonal; shorter ones are
padded, their slots masked), so each step writes one contiguous block at a static size inside a
`lax.fori_loop`. The mask of a step replaces the causal rule (`Attention.extend(causal=False)`).

The id layout and class dropout are the GPT's (`generators.gpt`). Dimension names: B batch, N
tokens, K codebook size, W width, D diagonals, L longest diagonal, S cache slots = 1 + D L.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok.generators import gpt
from jaxtok.generators.grid import grid_shape
from jaxtok.generators.trunk import TOKEN_MODEL_FIELDS
from jaxtok.nn.dense import Dense
from jaxtok.nn.norm import Norm
from jaxtok.nn.options import model_kwargs

FIELDS = TOKEN_MODEL_FIELDS + ("grid_width", "rope")
ROPES = ("1d", "2d")
_FAR = 1 << 30  # the distance of a padded cache slot: never seen


def distance_map(h: int, w: int) -> np.ndarray:
  """int [N]: Manhattan distance i + j of token (i, j) from the start token (0, 0), row-major."""
  i, j = np.divmod(np.arange(h * w), w)
  return i + j


def near_causal_mask(h: int, w: int) -> np.ndarray:
  """bool [N + 1, N + 1] over [cond, t_0..t_{N-1}]: query q sees key k iff dist(k) <= dist(q), the
  condition having distance -1 (it sees only itself; every token sees it)."""
  dist = np.concatenate([[-1], distance_map(h, w)])
  return dist[None, :] <= dist[:, None]


def diagonals(h: int, w: int) -> np.ndarray:
  """int [D, L]: raster index of the k-th token (rows ascending) of diagonal d, -1 past its end."""
  num, longest = h + w - 1, min(h, w)
  out = np.full((num, longest), -1, np.int64)
  for d in range(num):
    rows = range(max(0, d - w + 1), min(d, h - 1) + 1)
    for k, i in enumerate(rows):
      out[d, k] = i * w + (d - i)
  return out


def target_sources(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
  """(left, above) int [N]: the sequence slot (1 + raster index; 0 = condition) whose horizontal /
  vertical head predicts each token, -1 where that neighbour does not exist ((0, 0): both 0)."""
  i, j = np.divmod(np.arange(h * w), w)
  left = np.where(j > 0, i * w + j - 1 + 1, -1)
  above = np.where(i > 0, (i - 1) * w + j + 1, -1)
  left[0] = above[0] = 0
  return left, above


def step_sources(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
  """(left, above) int [D, L]: for entry k of diagonal d (d >= 1), the entry of diagonal d - 1 whose
  horizontal / vertical head predicts it, -1 where that neighbour does not exist (row 0: unused)."""
  diag = diagonals(h, w)
  left, above = np.full(diag.shape, -1, np.int64), np.full(diag.shape, -1, np.int64)
  for d in range(1, diag.shape[0]):
    prev = {int(c): k for k, c in enumerate(diag[d - 1]) if c >= 0}
    for k, c in enumerate(diag[d]):
      if c < 0:
        continue
      i, j = divmod(int(c), w)
      left[d, k] = prev.get(i * w + j - 1, -1) if j > 0 else -1
      above[d, k] = prev.get((i - 1) * w + j, -1) if i > 0 else -1
  return left, above


def combine(horizontal: jax.Array, vertical: jax.Array, left, above) -> jax.Array:
  """Logits [B, T', K] of targets from the heads' logits [B, T, K] at their sources: the mean of
  horizontal[left] and vertical[above] where both exist (index >= 0), else the one that does."""
  take = lambda x, idx: jnp.take(x, jnp.maximum(idx, 0), axis=1)
  has_l, has_a = (jnp.asarray(left) >= 0)[None, :, None], (jnp.asarray(above) >= 0)[None, :, None]
  hl, va = take(horizontal, left), take(vertical, above)
  return jnp.where(has_l & has_a, (hl + va) / 2, jnp.where(has_l, hl, va))


class NAR(gpt.GPT):
  """Next-neighbour AR over an h x w token grid (see the module docstring).

  Args (beyond the GPT's): grid_width: w (0: square grid of seq_len tokens); rope: "2d" (grid
  positions, the paper's; the configs' choice) or "1d" (sequence positions; the default, see above).
  """

  def __init__(self, *, grid_width: int = 0, rope: str = "1d", width: int = 768, heads: int = 12,
               dtype=jnp.float32, rngs: nnx.Rngs, **kw):
    if rope not in ROPES:
      raise ValueError(f"rope must be one of {ROPES}, got {rope!r}")
    if rope == "2d" and (width % heads or (width // heads) % 4):
      raise ValueError(f"rope='2d' needs a head dim width / heads divisible by 4, got "
                       f"width={width}, heads={heads}")
    super().__init__(width=width, heads=heads, dtype=dtype, rope=rope, rngs=rngs, **kw)
    self.rope = rope
    self.grid = grid_shape(self.seq_len, grid_width)
    self.v_norm = Norm(width, kind="rms", eps=1e-6, dtype=dtype, rngs=rngs)
    self.v_head = Dense(width, self.codebook_size, ("embed", "vocab"), use_bias=False, dtype=dtype,
                        kernel_init=nnx.initializers.normal(0.02), rngs=rngs)

  def heads(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(horizontal, vertical) logits [B, T, K] float32 of transformer features h [B, T, W]."""
    return self.net.logits(h), self.v_head(self.v_norm(h)).astype(jnp.float32)

  def positions(self, cells) -> jax.Array:
    """RoPE positions of raster indices `cells` int [T'] (-1: the condition, or padding): 1D
    int32 [T'] = cell + 1 (condition 0); 2D int32 [T', 2] = (row, column) (condition (0, 0))."""
    cells = jnp.asarray(cells)
    if self.rope == "1d":
      return jnp.where(cells >= 0, cells + 1, 0)
    rows, cols = jnp.divmod(jnp.maximum(cells, 0), self.grid[1])
    return jnp.stack([rows, cols], axis=-1).astype(jnp.int32)

  def __call__(self, tokens: jax.Array, labels: jax.Array | None = None, *, train: bool = False,
               rng: jax.Array | None = None) -> jax.Array:
    """Teacher-forced logits [B, N, K] float32 (raster order) for tokens [B, N] int32, one pass."""
    b, n = tokens.shape
    if n != self.seq_len:
      raise ValueError(f"tokens must have seq_len={self.seq_len} positions, got {n}")
    cond = self.training_condition_ids(labels, b, train=train, rng=rng)
    ids = jnp.concatenate([cond[:, None], tokens.astype(jnp.int32)], axis=1)
    h = self.net.features(self.net.embed(ids), mask=jnp.asarray(near_causal_mask(*self.grid)),
                          positions=self.positions(np.arange(-1, n)))
    return combine(*self.heads(h), *target_sources(*self.grid))

  @property
  def diag(self) -> np.ndarray:
    """The decoding order `diagonals(h, w)` int [D, L] (static; not kept as module state)."""
    return diagonals(*self.grid)

  @property
  def num_slots(self) -> int:
    return 1 + self.diag.size

  def init_cache(self, batch: int, dtype=None):
    """A diagonal-major cache of S = 1 + D L slots per layer."""
    return self.net.init_cache(batch, self.num_slots, dtype)

  def prefill(self, prompt: jax.Array, cache):
    """Writes the condition ids [B, 1] at slot 0; (logits [B, K] of token (0, 0), cache)."""
    if prompt.ndim != 2 or prompt.shape[1] != 1:
      raise ValueError(f"prompt must be condition ids [B, 1], got shape {tuple(prompt.shape)}")
    h, cache = self.net.extend_features(self.net.embed(prompt.astype(jnp.int32)), 0, cache,
                                        positions=self.positions(np.array([-1])))
    horizontal, vertical = self.heads(h)
    return (horizontal[:, 0] + vertical[:, 0]) / 2, cache

  def step(self, tokens: jax.Array, d, cache):
    """Writes diagonal d's tokens int32 [B, L] (rows ascending; entries past its length are ignored)
    at slots 1 + d L ..; `d` may be traced. Returns (logits [B, L, K] of diagonal d + 1, entries
    past its length meaningless, new cache)."""
    num, longest = self.diag.shape
    if tokens.ndim != 2 or tokens.shape[1] != longest:
      raise ValueError(f"tokens must be int32 [B, L={longest}] (diagonal d, padded to the longest), "
                       f"got shape {tuple(tokens.shape)}")
    cells = jnp.asarray(self.diag)[d]
    slot_dist = np.concatenate([[-1], np.where(self.diag >= 0, np.arange(num)[:, None], _FAR).reshape(-1)])
    mask = (jnp.asarray(slot_dist)[None, :] <= d)  # [1, S]: same for every query of the step
    h, cache = self.net.extend_features(
        self.net.embed(tokens.astype(jnp.int32)), 1 + d * longest, cache, mask=mask,
        positions=self.positions(cells), causal=False)
    left, above = (jnp.asarray(t)[jnp.minimum(d + 1, num - 1)] for t in step_sources(*self.grid))
    return combine(*self.heads(h), left, above), cache


def loss(model: NAR, tokens: jax.Array, labels: jax.Array | None, *, rng: jax.Array | None = None,
         train: bool = True, step=None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy over all N tokens (mean) with teacher forcing in one pass; {loss, accuracy}.
  `step` (the generator loss contract) does not change this objective."""
  del step
  return gpt.cross_entropy(model(tokens, labels, train=train, rng=rng), tokens)


def make_model(cfg: Mapping, *, rngs: nnx.Rngs) -> NAR:
  """A NAR from a config of its fields (the GPT's + grid_width) plus the common options and `name`;
  any other key raises ValueError."""
  return NAR(**model_kwargs(cfg, FIELDS, model="nar", cls=NAR), rngs=rngs)
