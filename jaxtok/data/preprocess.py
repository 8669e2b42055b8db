"""Image preprocessing as pure numpy functions (host side, inside the data pipeline).

Images are channels-last arrays [H, W, C] (uint8 or float); randomness comes from an explicit
`np.random.Generator` (the pipeline derives one per example from (seed, example index), so the same
example gets the same augmentation in every run and after a resume).

  resize             separable antialiased resize (triangle filter widened by the down-scale factor,
                     taps outside the image dropped and the weights renormalised: PIL's BILINEAR resize)
  resize_short       resize so the shorter side is `size`, keeping the aspect ratio (rounded)
  center_crop        the central [h, w] window (offset floor((H - h) / 2))
  random_crop        a uniformly placed [h, w] window
  random_resized_crop  Inception-style: area fraction in `scale`, log-uniform aspect ratio in `ratio`,
                     10 tries then a center crop of the clamped ratio; then resized to [h, w]
  random_flip        horizontal flip with probability p
  to_float           uint8 [0, 255] -> float32 [0, 1]

`resize` is two banded matrix products (rows, then columns), so an 8000 x 8000 photo resizes in a
fraction of a second; it also accepts jax arrays (`xp=jax.numpy`), as two dense products.
"""
from __future__ import annotations

import collections
import contextlib
import math
import threading
from typing import Any, Sequence

import numpy as np

# Output rows (columns) per banded matrix product in `resize` (see `_resample_rows`). A block of b
# rows reads ~(b + 1) * scale input rows for b * 2 * scale nonzero taps, so smaller blocks waste
# fewer multiply-adds on zeros and larger ones make fewer, larger products. With one BLAS thread on
# the 2-core CPU (load ~6), b = 4 / 8 / 16: 500x375 -> 256 0.6-0.7 ms for all; 2000x1500 -> 256
# 15-18 / 17-30 / 22-28 ms; 8000x8000 -> 256 300-335 / 306-334 / 340-430 ms.
_BLOCK = 8


def _check_image(image: Any, name: str = "image") -> None:
  if not hasattr(image, "shape") or len(image.shape) != 3:
    raise ValueError(f"{name} must be an [H, W, C] array, got shape {getattr(image, 'shape', None)} "
                     f"({type(image).__name__})")


def _size2(size: int | Sequence[int], name: str = "size") -> tuple[int, int]:
  if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
    size = (int(size), int(size))
  try:
    h, w = (int(s) for s in size)  # type: ignore[union-attr]
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be an int or (height, width), got {size!r}") from None
  if h < 1 or w < 1:
    raise ValueError(f"{name} must be positive, got {size!r}")
  return h, w


def resize_weights(in_size: int, out_size: int, *, antialias: bool = True) -> np.ndarray:
  """[out_size, in_size] float32 interpolation matrix (rows sum to 1).

  Output pixel i has its centre at c = (i + 0.5) * in/out - 0.5 in input coordinates; input pixel j
  gets weight max(0, 1 - |j - c| / s) with s = max(in/out, 1) when antialiasing (else s = 1), taps
  outside [0, in) are dropped and the row renormalised.
  """
  if in_size < 1 or out_size < 1:
    raise ValueError(f"sizes must be positive, got in_size={in_size}, out_size={out_size}")
  scale = in_size / out_size
  support = max(scale, 1.0) if antialias else 1.0
  centres = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
  # Only taps with |j - c| < s can be nonzero: the integers from floor(c - s) + 1, at most
  # ceil(2 s) + 1 of them. Evaluating those alone (not all `in_size` per row) matters when every
  # call has new sizes, as random_resized_crop's windows do.
  taps = int(np.ceil(2 * support)) + 1
  j = np.floor(centres - support)[:, None] + 1 + np.arange(taps)
  w = np.maximum(0.0, 1.0 - np.abs(j - centres[:, None]) / support)
  w[(j < 0) | (j >= in_size)] = 0.0
  total = w.sum(axis=1, keepdims=True)
  # A row can only be empty when no tap is within the support; take the nearest pixel then.
  empty = total[:, 0] == 0
  if np.any(empty):
    nearest = np.clip(np.round(centres[empty]).astype(int), 0, in_size - 1)
    w[empty] = 0.0
    j[empty, 0] = nearest
    w[empty, 0] = 1.0
    total = w.sum(axis=1, keepdims=True)
  # Scattered into a matrix padded by `taps` on both sides, so taps beyond the edges (weight 0)
  # land in the padding instead of colliding with real taps.
  dense = np.zeros((out_size, in_size + 2 * taps), np.float32)
  np.put_along_axis(dense, j.astype(np.int64) + taps, (w / total).astype(np.float32), axis=1)
  return dense[:, taps:taps + in_size].copy()


_state_lock = threading.Lock()  # guards the BLAS limit count and the weights cache
_blas = {"users": 0, "limiter": None, "controller": None}


@contextlib.contextmanager
def _single_threaded_blas():
  """numpy's BLAS limited to one thread while any `resize` runs (restored when the last one ends).

  The banded products are small, yet large enough for OpenBLAS to split them over threads; on a
  shared 2-core machine (load 8) that made a 2000x1500 resize 7x slower (~370 ms vs ~50 ms with one
  thread), and inside the input pipeline the parallelism is across images anyway (grain threads).
  The thread count is process-wide, so concurrent resizes share one limit through a count; without
  threadpoolctl (scikit-learn's dependency) nothing changes.
  """
  with _state_lock:
    if _blas["users"] == 0:
      try:
        if _blas["controller"] is None:
          from threadpoolctl import ThreadpoolController  # pylint: disable=g-import-not-at-top
          _blas["controller"] = ThreadpoolController()
        _blas["limiter"] = _blas["controller"].limit(limits=1, user_api="blas")
      except Exception:  # noqa: BLE001 -- no threadpoolctl or no BLAS it knows: run as is
        _blas["limiter"] = None
    _blas["users"] += 1
  try:
    yield
  finally:
    with _state_lock:
      _blas["users"] -= 1
      if _blas["users"] == 0 and _blas["limiter"] is not None:
        _blas["limiter"].restore_original_limits()
        _blas["limiter"] = None


def _bands(weights: np.ndarray, block: int = _BLOCK) -> list[tuple[int, int, int, int]]:
  """(row0, row1, lo, hi) per block of `block` output rows: the input range [lo, hi) holding every
  nonzero weight of rows row0..row1-1 (a resampling row is nonzero on one short run of taps)."""
  nonzero = weights != 0
  first = np.argmax(nonzero, axis=1)
  last = weights.shape[1] - np.argmax(nonzero[:, ::-1], axis=1)
  starts = np.arange(0, len(weights), block)
  ends = np.minimum(starts + block, len(weights))
  lo, hi = np.minimum.reduceat(first, starts), np.maximum.reduceat(last, starts)
  return list(zip(starts.tolist(), ends.tolist(), lo.tolist(), hi.tolist()))


_plans: collections.OrderedDict = collections.OrderedDict()
_PLAN_CACHE = 32  # entries, each at most _PLAN_CACHE_SIZE weights (1 MiB)
_PLAN_CACHE_SIZE = 1 << 18


class _Plan:
  """One axis's resampling: `weights` [out, in] float32 (read-only), their `bands`, and per channel
  count the column blocks as channel-interleaved matrices (`column_blocks`)."""

  def __init__(self, weights: np.ndarray):
    weights.flags.writeable = False
    self.weights, self.bands = weights, _bands(weights)
    self._columns: dict[int, list] = {}

  def column_blocks(self, channels: int) -> list[tuple[int, int, np.ndarray]]:
    """(first, last, matrix) per block: the block's columns of x viewed as [H, in * C] (channels
    interleaved, C-order) are x2d[:, first:last], and the product with matrix
    [(hi - lo) * C, (r1 - r0) * C] = kron(weights[r0:r1, lo:hi].T, eye(C)) gives output columns
    r0 * C .. r1 * C in the same layout."""
    if channels not in self._columns:
      eye = np.eye(channels, dtype=np.float32)
      blocks = []
      for r0, r1, lo, hi in self.bands:
        # [k, c, l, c'] = w[l, k] * (c == c'): products with 0 and 1, exact (np.kron, 10x slower).
        m = self.weights[r0:r1, lo:hi].T[:, None, :, None] * eye[None, :, None, :]
        blocks.append((lo * channels, hi * channels, m.reshape((hi - lo) * channels, -1)))
      self._columns[channels] = blocks
    return self._columns[channels]


def _plan(in_size: int, out_size: int, antialias: bool) -> _Plan:
  """The `_Plan` of an axis, cached for small sizes: a dataset's photos come in few sizes (most of
  ImageNet is 500x375 or 375x500), and at those sizes building the weights costs about as much as
  applying them."""
  key = (in_size, out_size, bool(antialias))
  with _state_lock:
    if key in _plans:
      _plans.move_to_end(key)
      return _plans[key]
  plan = _Plan(resize_weights(in_size, out_size, antialias=antialias))
  if in_size * out_size <= _PLAN_CACHE_SIZE:
    with _state_lock:
      _plans[key] = plan
      while len(_plans) > _PLAN_CACHE:
        _plans.popitem(last=False)
  return plan


def _resample_rows(x: np.ndarray, plan: _Plan) -> np.ndarray:
  """The plan's weights [out, in] applied along axis 0 of x [in, W, C] (any dtype): float32 [out, W, C].

  One matrix product per block of output rows, over only the input rows that block touches: a dense
  product would multiply by zeros ~out/2 times more often (8000 -> 256 rows: 128x), and per-tap loops
  would run at numpy's elementwise speed instead of BLAS's. The input is converted to float32 one
  slice at a time, so a uint8 photograph is never copied whole as float32.
  """
  weights = plan.weights
  out = np.empty((len(weights), x.shape[1] * x.shape[2]), np.float32)
  for r0, r1, lo, hi in plan.bands:
    rows = np.asarray(x[lo:hi], np.float32).reshape(hi - lo, -1)
    np.matmul(weights[r0:r1, lo:hi], rows, out=out[r0:r1])
  return out.reshape(len(weights), x.shape[1], x.shape[2])


def _resample_columns(x: np.ndarray, plan: _Plan) -> np.ndarray:
  """The plan's weights [out, in] applied along axis 1 of x float32 [H, in, C]: float32 [H, out, C].

  Products with channel-interleaved weights (`_Plan.column_blocks`) on x as it lies in memory: C
  times the multiply-adds of a product per channel, but no transposes of x and of the result, which
  cost more up to down-scales of ~12x ([256, W, 3] -> 341 columns on 2 cores: 0.38 vs 0.83 ms for
  W = 500, 1.4 vs 19 ms for W = 2000; at 8000 -> 256, 58 vs 45 ms, a small part of that resize).
  """
  hh, _, c = x.shape
  flat = np.ascontiguousarray(x).reshape(hh, -1)
  out = np.empty((hh, len(plan.weights) * c), np.float32)
  for (r0, r1, _, _), (first, last, matrix) in zip(plan.bands, plan.column_blocks(c)):
    np.matmul(flat[:, first:last], matrix, out=out[:, r0 * c:r1 * c])
  return out.reshape(hh, -1, c)


def resize(image: Any, size: int | Sequence[int], *, antialias: bool = True, xp: Any = np) -> Any:
  """Resizes [H, W, C] to float32 [h, w, C]: out[i, l, c] = sum_jk wy[i, j] x[j, k, c] wx[l, k].

  wy = resize_weights(H, h), wx = resize_weights(W, w); uint8 input is not rescaled (values stay in
  [0, 255]). With numpy the rows are resampled first, in the input's own memory order, then the
  columns of the (smaller) result, each by banded matrix products; an axis whose size does not change
  is left as it is (its weights are the identity). Other array modules (`xp=jax.numpy`) get two
  dense products (traceable: no data-dependent slicing).
  """
  _check_image(image)
  h, w = _size2(size)
  plan_y, plan_x = _plan(image.shape[0], h, antialias), _plan(image.shape[1], w, antialias)
  wy, wx = plan_y.weights, plan_x.weights
  if xp is not np:
    x = xp.asarray(image).astype(xp.float32)
    x = xp.einsum("ij,jkc->ikc", xp.asarray(wy), x)
    return xp.einsum("lk,ikc->ilc", xp.asarray(wx), x)
  x = np.asarray(image)
  with _single_threaded_blas():
    x = _resample_rows(x, plan_y) if h != x.shape[0] else x.astype(np.float32, order="C")
    return _resample_columns(x, plan_x) if w != x.shape[1] else x


def resize_short(image: Any, size: int, *, antialias: bool = True) -> np.ndarray:
  """Resizes so the shorter side is `size` (the other side rounded to keep the aspect ratio)."""
  _check_image(image)
  size = _size2(size)[0]
  hh, ww = image.shape[:2]
  if hh <= ww:
    out = (size, max(1, int(round(ww * size / hh))))
  else:
    out = (max(1, int(round(hh * size / ww))), size)
  return resize(image, out, antialias=antialias)


def _fits(image, h, w, name):
  if image.shape[0] < h or image.shape[1] < w:
    raise ValueError(f"{name}: image {tuple(image.shape[:2])} is smaller than the crop {(h, w)}")


def center_crop(image: Any, size: int | Sequence[int]) -> Any:
  """The central [h, w] window: rows floor((H - h) / 2) .. + h, columns likewise."""
  _check_image(image)
  h, w = _size2(size)
  _fits(image, h, w, "center_crop")
  y, x = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
  return image[y:y + h, x:x + w]


def random_crop(image: Any, size: int | Sequence[int], rng: np.random.Generator) -> Any:
  """A [h, w] window at a uniformly drawn position (y ~ U{0..H-h}, then x ~ U{0..W-w})."""
  _check_image(image)
  h, w = _size2(size)
  _fits(image, h, w, "random_crop")
  y = int(rng.integers(0, image.shape[0] - h + 1))
  x = int(rng.integers(0, image.shape[1] - w + 1))
  return image[y:y + h, x:x + w]


def crop_window(height: int, width: int, rng: np.random.Generator, *,
                scale: tuple[float, float] = (0.08, 1.0),
                ratio: tuple[float, float] = (3 / 4, 4 / 3), tries: int = 10) -> tuple[int, int, int, int]:
  """(y, x, h, w) of an Inception-style crop (torchvision RandomResizedCrop's sampling rule)."""
  if not 0 < scale[0] <= scale[1] <= 1:
    raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
  if not 0 < ratio[0] <= ratio[1]:
    raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
  area = height * width
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  for _ in range(tries):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      y = int(rng.integers(0, height - h + 1))
      x = int(rng.integers(0, width - w + 1))
      return y, x, h, w
  # Fallback: the whole image, cropped centrally to the nearest allowed aspect ratio.
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image: Any, size: int | Sequence[int], rng: np.random.Generator, *,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
  """A random window (see `crop_window`) resized (antialiased) to [h, w]; float32."""
  _check_image(image)
  y, x, h, w = crop_window(image.shape[0], image.shape[1], rng, scale=scale, ratio=ratio)
  return resize(image[y:y + h, x:x + w], size)


def random_flip(image: Any, rng: np.random.Generator, p: float = 0.5) -> Any:
  """Horizontal flip (the width axis reversed) when u < p, u ~ U[0, 1)."""
  _check_image(image)
  if not 0.0 <= p <= 1.0:
    raise ValueError(f"p must lie in [0, 1], got {p}")
  return image[:, ::-1] if rng.random() < p else image


def to_float(image: Any) -> np.ndarray:
  """uint8 [0, 255] -> float32 [0, 1] (x / 255); float input is returned as float32 unchanged."""
  arr = np.asarray(image)
  if arr.dtype == np.uint8:
    return arr.astype(np.float32) / 255.0
  if np.issubdtype(arr.dtype, np.floating):
    return arr.astype(np.float32)
  raise TypeError(f"image must be uint8 or floating, got {arr.dtype}")


def to_rgb(image: Any) -> np.ndarray:
  """[H, W] or [H, W, 1] grey -> [H, W, 3]; [H, W, 4] RGBA -> RGB; [H, W, 3] unchanged."""
  arr = np.asarray(image)
  if arr.ndim == 2:
    arr = arr[..., None]
  if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
    raise ValueError(f"image must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {arr.shape}")
  if arr.shape[-1] == 1:
    return np.repeat(arr, 3, axis=-1)
  return arr[..., :3]
