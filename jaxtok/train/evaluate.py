"""Held-out evaluation during and after training: PSNR / SSIM per token count and PNG image grids.

Abbreviations: N held-out images, H/W image size, T token counts.

`evaluate(reconstruct, images, token_counts)` decodes every held-out image from its first k tokens for
each k (prefix decoding: One-D-Piece and FlexTok quality should rise with k) and returns the mean
PSNR / SSIM per k; `image_grid` lays out rows = images, columns = original + one per k.

PSNR and SSIM come from `jaxtok.metrics.psnr` / `jaxtok.metrics.ssim` when those modules are present;
otherwise the standard definitions below are used (PSNR on [0, 1] images; SSIM with an 11x11
Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, averaged over channels, valid region).
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def psnr(x: jax.Array, y: jax.Array) -> jax.Array:
  """Per-image PSNR in dB of float [N, H, W, C] images in [0, 1] -> [N] float32."""
  mse = jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)), axis=(1, 2, 3))
  return -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  ax = np.arange(size, dtype=np.float64) - (size - 1) / 2
  g = np.exp(-0.5 * (ax / sigma) ** 2)
  return (g / g.sum()).astype(np.float32)


def ssim(x: jax.Array, y: jax.Array, *, window: int = 11, sigma: float = 1.5) -> jax.Array:
  """Per-image SSIM of float [N, H, W, C] images in [0, 1] -> [N] float32 (Wang et al. 2004)."""
  x, y = x.astype(jnp.float32), y.astype(jnp.float32)
  window = min(window, x.shape[1], x.shape[2])
  g = jnp.asarray(_gaussian_window(window, sigma))

  def blur(a):  # separable Gaussian filter, valid padding, per channel.
    n, h, w, c = a.shape
    a = a.transpose(0, 3, 1, 2).reshape(n * c, h, w)
    a = jax.vmap(lambda im: jax.vmap(lambda r: jnp.convolve(r, g, mode="valid"))(im))(a)
    a = jax.vmap(lambda im: jax.vmap(lambda col: jnp.convolve(col, g, mode="valid"), 1, 1)(im))(a)
    return a.reshape(n, c, a.shape[1], a.shape[2])

  c1, c2 = 0.01 ** 2, 0.03 ** 2
  mx, my = blur(x), blur(y)
  sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
  s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
  return jnp.mean(s, axis=(1, 2, 3))


def _metric_fns() -> tuple[Callable, Callable]:
  """The project's PSNR / SSIM when available (same definitions), else the local ones."""
  p, s = psnr, ssim
  try:
    from jaxtok.metrics import psnr as psnr_mod  # pylint: disable=g-import-not-at-top
    p = getattr(psnr_mod, "psnr", p)
  except ImportError:
    pass
  try:
    from jaxtok.metrics import ssim as ssim_mod  # pylint: disable=g-import-not-at-top
    s = getattr(ssim_mod, "ssim", s)
  except ImportError:
    pass
  return p, s


def evaluate(reconstruct: Callable[[jax.Array, int | None], jax.Array], images: np.ndarray,
             token_counts: Sequence[int | None], *, batch_size: int = 16) -> tuple[dict, dict]:
  """Mean PSNR / SSIM of `reconstruct(images, k)` for each k in token_counts.

  Args:
    reconstruct: (images [n, H, W, 3] float32 in [0, 1], k) -> reconstructions [n, H, W, 3].
    images: held-out images [N, H, W, 3] float32 in [0, 1].
    token_counts: prefix lengths k to decode from (None = all tokens).

  Returns:
    (metrics {str(k): {"psnr": dB, "ssim": float}}, recons {str(k): uint8 [N, H, W, 3]}).
  """
  psnr_fn, ssim_fn = _metric_fns()
  images = np.asarray(images, np.float32)
  metrics, recons = {}, {}
  for k in token_counts:
    outs, ps, ss = [], [], []
    for i in range(0, len(images), batch_size):
      x = jnp.asarray(images[i:i + batch_size])
      r = jnp.clip(jnp.asarray(reconstruct(x, k), jnp.float32), 0.0, 1.0)
      # Score the 8-bit image that would be saved, as the reference evaluations do.
      r = jnp.round(r * 255.0) / 255.0
      ps.append(np.asarray(psnr_fn(x, r)))
      ss.append(np.asarray(ssim_fn(x, r)))
      outs.append(np.asarray(jnp.round(r * 255.0), np.uint8))
    key = "all" if k is None else str(int(k))
    metrics[key] = {"psnr": float(np.mean(np.concatenate(ps))),
                    "ssim": float(np.mean(np.concatenate(ss)))}
    recons[key] = np.concatenate(outs)
  return metrics, recons


def image_grid(images: np.ndarray, columns: Sequence[np.ndarray], *, pad: int = 2) -> np.ndarray:
  """uint8 grid [rows*(H+pad)+pad, cols*(W+pad)+pad, 3]: row i = original i, then each column's i."""
  originals = np.asarray(np.round(np.clip(images, 0, 1) * 255), np.uint8)
  cols = [originals] + [np.asarray(c, np.uint8) for c in columns]
  n, h, w, _ = originals.shape
  grid = np.full((n * (h + pad) + pad, len(cols) * (w + pad) + pad, 3), 255, np.uint8)
  for j, col in enumerate(cols):
    for i in range(n):
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      grid[y:y + h, x:x + w] = col[i]
  return grid


def save_png(path: str, grid: np.ndarray, *, scale: int = 1) -> None:
  """Writes a uint8 [H, W, 3] array as PNG (nearest upscaling by `scale` for small images)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = Image.fromarray(grid)
  if scale > 1:
    img = img.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  img.save(path)


def final_report(reconstruct: Callable, images: np.ndarray, token_counts: Sequence[int | None],
                 out_dir: str, *, prefix: str = "final", extra: dict | None = None) -> dict:
  """Writes `<prefix>_grid.png` (rows = images, columns = original + each k) and `<prefix>_metrics.json`.

  Returns:
    the metrics dict written to the JSON ({"per_token_count": {k: {psnr, ssim}}, ...extra}).
  """
  metrics, recons = evaluate(reconstruct, images, token_counts)
  grid = image_grid(images, [recons[k] for k in metrics])
  scale = max(1, 128 // images.shape[1])
  save_png(os.path.join(out_dir, f"{prefix}_grid.png"), grid, scale=scale)
  report = {"columns": ["original"] + list(metrics), "per_token_count": metrics,
            "num_images": int(len(images))}
  report.update(extra or {})
  with open(os.path.join(out_dir, f"{prefix}_metrics.json"), "w") as f:
    json.dump(report, f, indent=2)
  return report
