"""TokenFlow's multi-scale residual quantization of a dual-codebook grid (VAR-style scales through
one shared-mapping quantizer; ByteFlow-AI/TokenFlow `tokenflow/tokenizer/vq_model.py`,
`TokenFlow.encode` / `decode_code`).

For a feature grid h = [semantic | pixel] [B, g, g, Ds + Dp] and scales s_1 < ... < s_n = g:

  r = h, f = 0
  for k = 1..n:
    q_k, i_k = dual.quantize(area_{g -> s_k}(r))      (one shared index per cell of the s_k grid)
    u_k = bicubic_{s_k -> g}(q_k)
    f = f + u_k;  r = r - sg(u_k)
  tokens = [i_1 (s_1^2, row-major), ..., i_n (s_n^2)]     codes at full resolution: f

area is torch's `F.interpolate(mode="area")` (adaptive average pooling), bicubic its
`mode="bicubic", align_corners=False` (Keys' cubic with a = -0.75, border samples repeated); both
are separable linear maps, applied here as one [n_out, n_in] matrix per axis (`area_matrix`,
`bicubic_matrix`; equal to torch's to float64 rounding, tested on golden matrices). Each scale's
q_k is the dual quantizer's straight-through output (codes forward, gradient to the l2-normalised
input), so gradients reach h through every scale's resizes, as in the release. Losses: each scale's
(codebook, commitment) of `dual.quantize`, averaged over the scales used.

Random scale drop (the release's training trick, `random_scale_drop_ratio` 0.1, one scale): with
probability `drop_prob` one scale k in 2..n (never the first) is skipped for the whole batch: it
contributes nothing to f, leaves r as it is and is left out of the loss average, which equals running
the loop over the scales without s_k (tested). Its indices are still computed (the token layout stays
static under jit) but belong to no reconstruction.

Dimension names: B batch, g grid side (last scale), s a scale, T = sum s^2 tokens, Ds / Dp code dims.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.quantizers import base, dual

sg = jax.lax.stop_gradient
CUBIC_A = -0.75  # torch's bicubic coefficient (PIL and jax.image.resize use -0.5)


def area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """float64 [n_out, n_in]: adaptive average pooling (torch "area"); row i averages inputs
  floor(i n_in / n_out) .. ceil((i + 1) n_in / n_out) - 1."""
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m


def _cubic(t: float) -> np.ndarray:
  """Keys' cubic convolution weights of the taps at offsets -1, 0, 1, 2 for fraction t."""
  a = CUBIC_A
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1      # |x| <= 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
  return np.array([far(t + 1), near(t), near(1 - t), far(2 - t)])


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """float64 [n_out, n_in]: torch's bicubic resize (align_corners False): source coordinate
  (i + 0.5) n_in / n_out - 0.5, four taps around it, indices outside [0, n_in) clamped to the
  border."""
  m = np.zeros((n_out, n_in))
  scale = n_in / n_out
  for i in range(n_out):
    src = (i + 0.5) * scale - 0.5
    x0 = math.floor(src)
    for off, w in zip(range(-1, 3), _cubic(src - x0)):
      m[i, min(max(x0 + off, 0), n_in - 1)] += w
  return m


def resize(x: jax.Array, rows: np.ndarray, cols: np.ndarray) -> jax.Array:
  """x [B, h, w, C] -> [B, rows.shape[0], cols.shape[0], C] by separable matrices (float32)."""
  return jnp.einsum("oh,bhwc,pw->bopc", jnp.asarray(rows, jnp.float32), x.astype(jnp.float32),
                    jnp.asarray(cols, jnp.float32), precision=jax.lax.Precision.HIGHEST)


def check_scales(scales: Sequence[int], grid: int | None = None) -> tuple[int, ...]:
  """The scales as a tuple of strictly increasing positive ints (ending at `grid` when given)."""
  if isinstance(scales, (str, bytes)) or not hasattr(scales, "__iter__") or not all(
      isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in scales):
    raise ValueError(f"scales must be a sequence of ints, got {scales!r}")
  out = tuple(int(s) for s in scales)
  if not out or out[0] < 1 or any(a >= b for a, b in zip(out, out[1:])):
    raise ValueError(f"scales must be strictly increasing positive ints, got {scales!r}")
  if grid is not None and out[-1] != grid:
    raise ValueError(f"the last scale must equal the feature grid side {grid}, got scales {out}")
  return out


def num_tokens(scales: Sequence[int]) -> int:
  """T = sum of s^2 over the scales."""
  return sum(int(s) ** 2 for s in scales)


class MultiScaleOutput(NamedTuple):
  """What `quantize` returns (a pytree).

  Attributes:
    semantic: [B, g, g, Ds] summed upsampled semantic codes (straight-through).
    pixel: [B, g, g, Dp] summed upsampled pixel codes (straight-through).
    indices: [B, T] int32, the scales' shared indices in order, each scale row-major.
    codes: [B, T, Ds + Dp] float32, each token's (semantic, pixel) code (l2-normalised).
    losses: {codebook, commitment} float32 scalars, averaged over the scales used.
    metrics: {usage, perplexity, distortion_semantic, distortion_pixel} of the last scale, and
      `scales_used`.
  """
  semantic: jax.Array
  pixel: jax.Array
  indices: jax.Array
  codes: jax.Array
  losses: dict[str, jax.Array]
  metrics: dict[str, jax.Array]


def drop_index(rng: jax.Array, num_scales: int, prob: float) -> jax.Array:
  """int32 scalar: with probability `prob` a uniform index in [1, num_scales) (the scale to skip),
  else -1 (the release's random scale drop; never the first scale, never with one scale)."""
  if not 0.0 <= prob <= 1.0:
    raise ValueError(f"drop_prob must be in [0, 1], got {prob!r}")
  if num_scales < 2 or prob == 0.0:
    return jnp.asarray(-1, jnp.int32)
  r_do, r_which = jax.random.split(rng)
  which = jax.random.randint(r_which, (), 1, num_scales, dtype=jnp.int32)
  return jnp.where(jax.random.bernoulli(r_do, prob), which, -1).astype(jnp.int32)


def quantize(semantic: jax.Array, pixel: jax.Array, semantic_codebook: jax.Array,
             pixel_codebook: jax.Array, scales: Sequence[int], *, drop: jax.Array | int = -1,
             semantic_weight: float = 1.0, pixel_weight: float = 1.0, beta: float = 0.25,
             codebook_weight: float = 1.0, l2_norm: bool = True) -> MultiScaleOutput:
  """Multi-scale residual dual quantization (module docstring).

  Args:
    semantic: [B, g, g, Ds]; pixel: [B, g, g, Dp] float feature grids.
    semantic_codebook, pixel_codebook, semantic_weight, pixel_weight, beta, codebook_weight,
      l2_norm: as `dual.quantize`, applied at every scale.
    scales: strictly increasing ints ending at g.
    drop: int32 scalar (traced or not): the index of a scale to skip (`drop_index`), -1 for none.
  """
  for name, v in (("semantic", semantic), ("pixel", pixel)):
    base.check_float_array(name, v)
    if v.ndim != 4 or v.shape[1] != v.shape[2]:
      raise ValueError(f"{name} must be a square feature grid [B, g, g, D], got {tuple(v.shape)}")
  if semantic.shape[:3] != pixel.shape[:3]:
    raise ValueError(f"semantic and pixel must share [B, g, g], got {tuple(semantic.shape)} and "
                     f"{tuple(pixel.shape)}")
  g = semantic.shape[1]
  scales = check_scales(scales, g)
  ds = semantic.shape[-1]
  residual = jnp.concatenate([semantic, pixel], -1).astype(jnp.float32)
  total = jnp.zeros_like(residual)
  drop = jnp.asarray(drop, jnp.int32)
  indices, codes, losses, used = [], [], [], []
  for k, s in enumerate(scales):
    x = resize(residual, area_matrix(g, s), area_matrix(g, s))
    out = dual.quantize(x[..., :ds], x[..., ds:], semantic_codebook, pixel_codebook,
                        semantic_weight=semantic_weight, pixel_weight=pixel_weight, beta=beta,
                        codebook_weight=codebook_weight, l2_norm=l2_norm)
    q = jnp.concatenate([out.semantic, out.pixel], -1)
    up = resize(q, bicubic_matrix(s, g), bicubic_matrix(s, g))
    keep = (drop != k).astype(jnp.float32)
    total = total + keep * up
    residual = residual - keep * sg(up)
    indices.append(out.indices.reshape(out.indices.shape[0], -1))
    codes.append(sg(q).reshape(q.shape[0], s * s, -1))
    losses.append({n: keep * v for n, v in out.losses.items()})
    used.append(keep)
  n_used = sum(used)
  loss = {n: sum(l[n] for l in losses) / n_used for n in losses[0]}
  metrics = dict(out.metrics, scales_used=n_used)
  return MultiScaleOutput(total[..., :ds], total[..., ds:], jnp.concatenate(indices, 1),
                          jnp.concatenate(codes, 1), loss, metrics)


def indices_to_grid(indices: jax.Array, semantic_codebook: jax.Array, pixel_codebook: jax.Array,
                    scales: Sequence[int], *, l2_norm: bool = True) -> tuple[jax.Array, jax.Array]:
  """(semantic [B, g, g, Ds], pixel [B, g, g, Dp]) float32: the sum over scales of each scale's
  codes upsampled to the last scale (`decode_code` of the release); indices int32 [B, T]."""
  scales = check_scales(scales)
  t = num_tokens(scales)
  base.check_int_array("indices", indices)
  if indices.ndim != 2 or indices.shape[1] != t:
    raise ValueError(f"indices must be [B, {t}] (sum of s^2 over scales {scales}), got "
                     f"{tuple(indices.shape)}")
  cs, cp = dual.indices_to_codes(indices, semantic_codebook, pixel_codebook, l2_norm=l2_norm)
  q = jnp.concatenate([cs, cp], -1)
  g, b, start = scales[-1], indices.shape[0], 0
  total = jnp.zeros((b, g, g, q.shape[-1]), jnp.float32)
  for s in scales:
    grid = q[:, start:start + s * s].reshape(b, s, s, -1)
    total = total + resize(grid, bicubic_matrix(s, g), bicubic_matrix(s, g))
    start += s * s
  ds = semantic_codebook.shape[1]
  return total[..., :ds], total[..., ds:]
