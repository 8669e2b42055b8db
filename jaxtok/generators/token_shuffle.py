"""Token-Shuffle (Ma et al. 2025): s x s neighbouring tokens of the 2D grid merged into one position.

The tokens [B, N] are an h x w grid (`generators.grid`). Token-shuffle takes each s x s window of the
grid (windows in raster order, tokens in a window in raster order: `shuffle_permutation`), embeds its
s^2 tokens with the GPT's table, compresses each embedding to W / s^2 channels (one shared Dense),
concatenates them along channels (width W again) and fuses them with a residual MLP, so the causal
transformer (the GPT's `TokenTrunk`, unchanged) runs over M = N / s^2 positions:
  [cond, window_0, ..., window_{M-2}]  -> the output at slot m predicts window m.
Token-unshuffle: the normed output [W] is split along channels into s^2 chunks of W / s^2, each
expanded back to W (one shared Dense), passed through its own residual MLP (one per sub-position) and
its own output head (s^2 heads; head 0 is the trunk's head), giving logits [B, M, s^2, K] that
`unshuffle` puts back in grid order [B, N, K]. (Only the paper's abstract was at hand here; as
recalled, not checked, its token-unshuffle restores the s^2 chunks with MLPs and then uses the LLM's
single output head: per-sub-position MLPs and heads are the untied form, equal to it when tied.)

As in the paper, the s^2 tokens of a window come from ONE forward pass and are sampled independently
given everything before the window (no dependence among the s^2 tokens of the same window); the
autoregression runs over windows. Sampling is `jaxtok.samplers.autoregressive.sample` with token
groups (a step draws the [B, s^2] window from logits [B, s^2, K]) over the GPT's KV cache (M slots).

At s = 1 the model is a GPT plus two residual MLPs and two square Dense layers: with the compress and
expand kernels set to the identity and the MLPs' output kernels to zero it computes exactly the GPT
with the same embed/blocks/norm/head weights (tested).

The id layout and class dropout are the GPT's (`generators.gpt`). Dimension names: B batch, N tokens,
M = N / s^2 windows, S2 = s^2, K codebook size, W width.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok.generators import gpt
from jaxtok.generators.grid import grid_shape
from jaxtok.generators.trunk import TOKEN_MODEL_FIELDS, swiglu_hidden
from jaxtok.nn.dense import Dense
from jaxtok.nn.mlp import Mlp
from jaxtok.nn.options import model_kwargs

_INIT = nnx.initializers.normal(0.02)
FIELDS = TOKEN_MODEL_FIELDS + ("grid_width", "shuffle")


def shuffle_permutation(h: int, w: int, s: int) -> np.ndarray:
  """int [N]: grid index of entry m * s^2 + a * s + b of the shuffled sequence, i.e. row a, column b
  of window m (windows raster-ordered over the (h/s) x (w/s) grid of windows).

  Raises:
    ValueError: when s does not divide h and w.
  """
  if s < 1 or h % s or w % s:
    raise ValueError(f"shuffle must be >= 1 and divide the grid {h}x{w}, got shuffle={s}")
  mi, mj, a, b = np.meshgrid(np.arange(h // s), np.arange(w // s), np.arange(s), np.arange(s),
                             indexing="ij")
  return ((mi * s + a) * w + mj * s + b).reshape(-1)


def shuffle(tokens: jax.Array, h: int, w: int, s: int) -> jax.Array:
  """[B, N, ...] grid-ordered -> [B, M, s^2, ...] windows."""
  b, n = tokens.shape[:2]
  if n != h * w:
    raise ValueError(f"tokens must have h*w={h * w} positions, got {n}")
  return tokens[:, shuffle_permutation(h, w, s)].reshape((b, n // (s * s), s * s) + tokens.shape[2:])


def unshuffle(windows: jax.Array, h: int, w: int, s: int) -> jax.Array:
  """[B, M, s^2, ...] windows -> [B, N, ...] grid order (the inverse of `shuffle`)."""
  b = windows.shape[0]
  flat = windows.reshape((b, h * w) + windows.shape[3:])
  return flat[:, np.argsort(shuffle_permutation(h, w, s))]


class TokenShuffle(gpt.GPT):
  """A GPT over s x s windows of a token grid (see the module docstring).

  Args (beyond the GPT's): grid_width: w of the h x w grid (0: square); shuffle: s (divides h, w;
    s^2 divides width).
  """

  def __init__(self, *, grid_width: int = 0, shuffle: int = 2, width: int = 768,
               mlp_ratio: float = 4.0, dtype=jnp.float32, rngs: nnx.Rngs, **kw):
    super().__init__(width=width, mlp_ratio=mlp_ratio, dtype=dtype, rngs=rngs, **kw)
    self.grid = grid_shape(self.seq_len, grid_width)
    shuffle_permutation(*self.grid, shuffle)  # checks s against the grid
    s2 = shuffle * shuffle
    if width % s2:
      raise ValueError(f"width must be divisible by shuffle^2={s2}, got width={width}")
    self.shuffle, self.num_windows, self.width = shuffle, self.seq_len // s2, width
    dense = lambda i, o, names: Dense(i, o, names, use_bias=False, dtype=dtype, kernel_init=_INIT,
                                      rngs=rngs)
    mlp = lambda: Mlp(width, swiglu_hidden(width, mlp_ratio), kind="swiglu", use_bias=False,
                      dtype=dtype, kernel_init=_INIT, rngs=rngs)
    self.compress = dense(width, width // s2, ("embed", None))
    self.fuse = mlp()
    self.expand = dense(width // s2, width, (None, "embed"))
    self.sub_mlps = nnx.List([mlp() for _ in range(s2)])
    self.heads = nnx.List([dense(width, self.codebook_size, ("embed", "vocab"))
                           for _ in range(s2 - 1)])

  def merge(self, windows: jax.Array) -> jax.Array:
    """Token-shuffle: windows int32 [B, T, s^2] -> transformer inputs [B, T, W]."""
    b, t, s2 = windows.shape
    e = self.compress(self.net.embed(windows.astype(jnp.int32)))  # [B, T, s^2, W/s^2]
    x = e.reshape(b, t, self.width)
    return x + self.fuse(x)

  def unmerge(self, h: jax.Array) -> jax.Array:
    """Token-unshuffle: transformer features [B, T, W] -> logits [B, T, s^2, K] float32."""
    b, t, _ = h.shape
    s2 = self.shuffle * self.shuffle
    u = self.expand(self.net.norm(h).reshape(b, t, s2, self.width // s2))  # [B, T, s^2, W]
    heads = [self.net.head] + list(self.heads)
    out = []
    for j in range(s2):
      uj = u[:, :, j] + self.sub_mlps[j](u[:, :, j])
      out.append(heads[j](uj).astype(jnp.float32))
    return jnp.stack(out, axis=2)

  def transformer_inputs(self, tokens: jax.Array, labels: jax.Array | None = None, *,
                         train: bool = False, rng: jax.Array | None = None) -> jax.Array:
    """The teacher-forced transformer input [B, M, W] for tokens [B, N]: cond, windows 0..M-2."""
    b, n = tokens.shape
    if n != self.seq_len:
      raise ValueError(f"tokens must have seq_len={self.seq_len} positions, got {n}")
    cond = self.training_condition_ids(labels, b, train=train, rng=rng)
    windows = shuffle(tokens, *self.grid, self.shuffle)
    return jnp.concatenate([self.net.embed(cond[:, None]), self.merge(windows[:, :-1])], axis=1)

  def __call__(self, tokens: jax.Array, labels: jax.Array | None = None, *, train: bool = False,
               rng: jax.Array | None = None) -> jax.Array:
    """Teacher-forced logits [B, N, K] float32 (grid order) for tokens [B, N] int32."""
    x = self.transformer_inputs(tokens, labels, train=train, rng=rng)
    return unshuffle(self.unmerge(self.net.features(x)), *self.grid, self.shuffle)

  def init_cache(self, batch: int, dtype=None):
    """A cache of M slots per layer (condition + M - 1 windows)."""
    return self.net.init_cache(batch, self.num_windows, dtype)

  def prefill(self, prompt: jax.Array, cache):
    """Writes prompt ids [B, P] into slots [0, P); (logits [B, s^2, K] of window 0, cache)."""
    h, cache = self.net.extend_features(self.net.embed(prompt.astype(jnp.int32)), 0, cache)
    return self.unmerge(h[:, -1:])[:, 0], cache

  def step(self, window: jax.Array, position, cache):
    """Writes window int32 [B, s^2] (window position-1) at slot `position` (may be traced);
    returns (logits [B, s^2, K] of window `position`, new cache)."""
    if window.ndim != 2 or window.shape[1] != self.shuffle ** 2:
      raise ValueError(f"window must be int32 [B, s^2={self.shuffle ** 2}], got shape "
                       f"{tuple(window.shape)}")
    h, cache = self.net.extend_features(self.merge(window[:, None]), position, cache)
    return self.unmerge(h)[:, 0], cache

  def tokens_from_windows(self, windows: jax.Array) -> jax.Array:
    """Sampled windows int32 [B, M, s^2] -> tokens int32 [B, N] in grid order."""
    return unshuffle(windows, *self.grid, self.shuffle)


def loss(model: TokenShuffle, tokens: jax.Array, labels: jax.Array | None, *,
         rng: jax.Array | None = None, train: bool = True,
         step=None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy over all N tokens (mean) and metrics {loss, accuracy}. `step` (the generator
  loss contract) does not change this objective."""
  del step
  return gpt.cross_entropy(model(tokens, labels, train=train, rng=rng), tokens)


def make_model(cfg: Mapping, *, rngs: nnx.Rngs) -> TokenShuffle:
  """A TokenShuffle from a config of its fields (the GPT's + grid_width, shuffle) plus the common
  options and `name`; any other key raises ValueError."""
  return TokenShuffle(**model_kwargs(cfg, FIELDS, model="token_shuffle", cls=TokenShuffle),
                      rngs=rngs)
