"""GPSToken's entropy-driven partition of an image into variable-size, texture-homogeneous regions,
and the Gaussians that initialise them (pure numpy; `partition_batch` is what the model calls through
`jax.pure_callback`).

Complexity of a region (the release's `calculate_complexity_degree`): the grey region (values in
[0, 1]) is resized bilinearly to 64 x 64, Sobel gradients (3 x 3, replicated border) give the edge
magnitude, a 512-bin histogram over [-5.5, 5.5] gives the entropy E (bits), and
  complexity = E^weight * h * w   (h, w the region's size in pixels).
Greedy splitting (the release's `adaptive_initialize`): start from the whole image; while there are
fewer than `num_regions` regions, take the most complex region that can still be split (one whose
row or column span h-1 / w-1 exceeds `min_size`), and halve it across its longer side (a square
region: across the side whose halves have the smaller least complexity; on a tie the rows are
split (top and bottom halves), as the release's `else` branch). The result
is a partition: every pixel lies in exactly one region.

A region [r0, r1] x [c0, c1] (inclusive) initialises a Gaussian in the [-1, 1] pixel frame:
  sigma_x = (c1 - c0) / W * 2/3,  sigma_y = (r1 - r0) / H * 2/3,  rho = 0,
  x = (c0 + c1) / (W - 1) - 1,    y = (r0 + r1) / (H - 1) - 1.
Grey = 0.299 R + 0.587 G + 0.114 B.
"""
from __future__ import annotations

import numpy as np

_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)
_RESIZE = 64


def _resize_bilinear(img: np.ndarray, size: int) -> np.ndarray:
  """OpenCV-style bilinear resize (half-pixel centres, edges clamped) of [h, w] to [size, size]."""
  def axis(n):
    src = (np.arange(size) + 0.5) * n / size - 0.5
    src = np.clip(src, 0, n - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    return lo, hi, src - lo
  r0, r1, fr = axis(img.shape[0])
  c0, c1, fc = axis(img.shape[1])
  top = img[r0][:, c0] * (1 - fc) + img[r0][:, c1] * fc
  bottom = img[r1][:, c0] * (1 - fc) + img[r1][:, c1] * fc
  return top * (1 - fr[:, None]) + bottom * fr[:, None]


def _correlate3(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  p = np.pad(img, 1, mode="edge")
  h, w = img.shape
  return sum(kernel[i, j] * p[i:i + h, j:j + w] for i in range(3) for j in range(3))


def complexity(grey: np.ndarray, weight: float = 1.0) -> float:
  """The region's complexity E^weight * h * w (module docstring); grey float [h, w] in [0, 1]."""
  h, w = grey.shape
  img = _resize_bilinear(grey.astype(np.float64), _RESIZE)
  gx, gy = _correlate3(img, _SOBEL_X), _correlate3(img, _SOBEL_X.T)
  mag = np.sqrt(gx**2 + gy**2)
  hist, _ = np.histogram(mag, bins=512, range=(-5.5, 5.5))
  hist = hist / (hist.sum() + 1e-5)
  entropy = -np.sum(hist * np.log2(hist + 1e-10))
  return float(entropy**weight * h * w)


def partition(grey: np.ndarray, num_regions: int, *, min_size: int = 8,
              weight: float = 2.5) -> np.ndarray:
  """Regions int32 [num_regions, 4] (r0, r1, c0, c1), inclusive bounds, of grey float [H, W] in [0, 1].

  Raises ValueError when the image cannot be cut into num_regions regions above min_size.
  """
  grey = np.asarray(grey, np.float64)
  if grey.ndim != 2:
    raise ValueError(f"grey must be [H, W], got shape {grey.shape}")
  if num_regions < 1:
    raise ValueError(f"num_regions must be >= 1, got {num_regions}")
  h, w = grey.shape
  cand = [(complexity(grey, weight), (0, h - 1, 0, w - 1))]
  while len(cand) < num_regions:
    cand.sort(key=lambda c: c[0], reverse=True)  # stable: ties keep their order
    pick = next((i for i, (_, (r0, r1, c0, c1)) in enumerate(cand)
                 if r1 - r0 > min_size or c1 - c0 > min_size), None)
    if pick is None:
      raise ValueError(f"cannot split a {h}x{w} image into num_regions={num_regions} regions with "
                       f"min_size={min_size} (stopped at {len(cand)})")
    _, (r0, r1, c0, c1) = cand.pop(pick)
    rh, rw = r1 - r0 + 1, c1 - c0 + 1

    def halves(cols: bool):
      if cols:
        m = c0 + rw // 2
        boxes = ((r0, r1, c0, m - 1), (r0, r1, m, c1))
      else:
        m = r0 + rh // 2
        boxes = ((r0, m - 1, c0, c1), (m, r1, c0, c1))
      return [(complexity(grey[a:b + 1, c:d + 1], weight), (a, b, c, d)) for a, b, c, d in boxes]

    if rw != rh:
      parts = halves(rw > rh)
    else:
      cols, rows = halves(True), halves(False)
      parts = cols if min(p[0] for p in cols) < min(p[0] for p in rows) else rows
    cand.extend(parts)
  return np.array([box for _, box in cand], np.int32)


def regions_to_gaussians(regions: np.ndarray, height: int, width: int) -> np.ndarray:
  """Initial Gaussians float32 [S, 5] (sigma_x, sigma_y, rho, x, y) of regions [S, 4] (module
  docstring)."""
  r = np.asarray(regions, np.float64)
  r0, r1, c0, c1 = r[..., 0], r[..., 1], r[..., 2], r[..., 3]
  out = np.stack([(c1 - c0) / width * 2.0 / 3.0, (r1 - r0) / height * 2.0 / 3.0, np.zeros_like(r0),
                  (c0 + c1) / (width - 1) - 1.0, (r0 + r1) / (height - 1) - 1.0], axis=-1)
  return out.astype(np.float32)


def partition_batch(images: np.ndarray, num_regions: int, min_size: int, weight: float) -> np.ndarray:
  """Regions int32 [B, S, 4] of images float [B, H, W, 3] in [0, 1] (grey conversion inside)."""
  images = np.asarray(images, np.float64)
  grey = images[..., 0] * 0.299 + images[..., 1] * 0.587 + images[..., 2] * 0.114
  return np.stack([partition(g, num_regions, min_size=min_size, weight=weight) for g in grey])
