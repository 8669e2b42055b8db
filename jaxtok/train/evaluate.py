"""Held-out evaluation during and after training: PSNR / SSIM per token count and PNG image grids.

Abbreviations: N held-out images, H/W image size, T token counts.

`evaluate(reconstruct, images, token_counts)` decodes every held-out image from its first k tokens for
each k (prefix decoding: One-D-Piece and FlexTok quality should rise with k) and returns the mean
PSNR / SSIM per k; `image_grid` lays out rows = images, columns = original + one per k.

PSNR and SSIM come from `jaxtok.metrics.psnr` / `jaxtok.metrics.ssim` (their only definitions).
This is the one scorer: the training loop's evaluations and `tools/evaluate.py` both call `evaluate`
with `reconstruct_fn` on the held-out set of the run's config (`jaxtok.data.pipeline.heldout_images`),
so the two report identical numbers for one checkpoint. Images are scored in fixed chunks of
`EVAL_CHUNK` whatever the caller's batch size, so the compiled shapes (and the float rounding) are
the same in both.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok.metrics import psnr as psnr_lib
from jaxtok.metrics import ssim as ssim_lib

EVAL_CHUNK = 16


def reconstruct_fn(tokenizer: Any, params: Any, *, seed: int = 0) -> Callable:
  """`(images [n, H, W, 3] float32, k) -> reconstructions` of a Tokenizer's weights.

  Stochastic decoders (FlexTok's flow) draw from `jax.random.key(seed)`, the same key for every
  chunk, so every tool that scores a checkpoint sees the same reconstructions.
  """
  key = jax.random.key(seed)
  return lambda images, k: tokenizer.reconstruct(params, images, num_tokens=k, rng=key)


def captioned_reconstruct_fn(tokenizer: Any, params: Any, *, seed: int = 0) -> Callable:
  """`(images [n, H, W, 3] float32, k, text) -> reconstructions` of a text-aware tokenizer's weights
  (its model's `reconstruct_captioned`; text: {name: [n, ...]} caption inputs of those images,
  `data.photo_captions`). One jitted function per tokenizer, shared by every call."""
  fn = getattr(tokenizer, "_captioned_reconstruct", None)
  if fn is None:
    graphdef = tokenizer.graphdef

    def body(p, images, text, rng, num_tokens):
      return nnx.merge(graphdef, p).reconstruct_captioned(images, text, num_tokens=num_tokens, rng=rng)

    fn = tokenizer._captioned_reconstruct = jax.jit(body, static_argnums=4)
  key = jax.random.key(seed)
  return lambda images, k, text: fn(params, images, {n: jnp.asarray(v) for n, v in text.items()},
                                    key, k)


def evaluate(reconstruct: Callable[..., jax.Array], images: np.ndarray,
             token_counts: Sequence[int | None], *,
             inputs: dict[str, np.ndarray] | None = None) -> tuple[dict, dict]:
  """Mean PSNR / SSIM of `reconstruct(images, k)` for each k in token_counts.

  Args:
    reconstruct: (images [n, H, W, 3] float32 in [0, 1], k) -> reconstructions [n, H, W, 3]; with
      `inputs`, (images, k, {name: rows of inputs for those images}) (`captioned_reconstruct_fn`).
    images: held-out images [N, H, W, 3] float32 in [0, 1].
    token_counts: prefix lengths k to decode from (None = all tokens).
    inputs: None, or per-image arrays {name: [N, ...]} the reconstruction also reads (captions).

  Returns:
    (metrics {str(k): {"psnr": dB, "ssim": float}}, recons {str(k): uint8 [N, H, W, 3]}); "ssim"
    is left out for images smaller than its 11x11 window. PSNR is the mean of per-image PSNRs.
  """
  images = np.asarray(images, np.float32)
  metrics, recons = {}, {}
  for k in token_counts:
    outs, ps, ss = [], [], []
    for i in range(0, len(images), EVAL_CHUNK):
      x = jnp.asarray(images[i:i + EVAL_CHUNK])
      args = () if inputs is None else ({n: v[i:i + EVAL_CHUNK] for n, v in inputs.items()},)
      r = jnp.clip(jnp.asarray(reconstruct(x, k, *args), jnp.float32), 0.0, 1.0)
      # Score the 8-bit image that would be saved, as the reference evaluations do.
      r = jnp.round(r * 255.0) / 255.0
      ps.append(np.asarray(psnr_lib.psnr(x, r)))
      if min(x.shape[1:3]) >= 11:   # SSIM's 11x11 window
        ss.append(np.asarray(ssim_lib.ssim(x, r)))
      outs.append(np.asarray(jnp.round(r * 255.0), np.uint8))
    key = "all" if k is None else str(int(k))
    metrics[key] = {"psnr": psnr_lib.mean_psnr(np.concatenate(ps))}
    if ss:
      metrics[key]["ssim"] = float(np.mean(np.concatenate(ss), dtype=np.float64))
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
                 out_dir: str, *, prefix: str = "final", extra: dict | None = None,
                 inputs: dict[str, np.ndarray] | None = None) -> dict:
  """Writes `<prefix>_grid.png` (rows = images, columns = original + each k) and `<prefix>_metrics.json`.
  inputs: per-image caption inputs, as `evaluate`'s.

  Returns:
    the metrics dict written to the JSON ({"per_token_count": {k: {psnr, ssim}}, ...extra}).
  """
  metrics, recons = evaluate(reconstruct, images, token_counts, inputs=inputs)
  grid = image_grid(images, [recons[k] for k in metrics])
  scale = max(1, 128 // images.shape[1])
  save_png(os.path.join(out_dir, f"{prefix}_grid.png"), grid, scale=scale)
  report = {"columns": ["original"] + list(metrics), "per_token_count": metrics,
            "num_images": int(len(images))}
  report.update(extra or {})
  with open(os.path.join(out_dir, f"{prefix}_metrics.json"), "w") as f:
    json.dump(report, f, indent=2)
  return report
