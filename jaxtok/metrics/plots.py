"""PNG plots of tokenizer evaluations (matplotlib, headless Agg backend).

rate_distortion: bytes per image (log scale) against PSNR for the tokenizer at each token count (raw
ids, k * log2(C) bits, and real coded files when the rows have them) and for JPEG / WebP / AVIF at the
same per-image PSNR.
psnr_vs_tokens: PSNR (and SSIM on a second axis when given) against the number of tokens kept.
"""
from __future__ import annotations

import os
from typing import Sequence


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def rate_distortion(rows: Sequence[dict], path: str, *, title: str = "rate-distortion") -> None:
  """rows: `jaxtok.metrics.rate_distortion.rate_distortion_table` output."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 4))
  psnr = [r["psnr"] for r in rows]
  ax.plot([r["token_bytes"] for r in rows], psnr, "o-", label="tokenizer, raw ids (k log2 C bits)")
  for r in rows:
    ax.annotate(str(r["num_tokens"]), (r["token_bytes"], r["psnr"]), textcoords="offset points",
                xytext=(4, -10), fontsize=7)
  codecs = {"jpeg": "s--", "webp": "^--", "avif": "v--"}
  names = [k[:-6] for k in (rows[0] if rows else {}) if k.endswith("_bytes") and k != "token_bytes"]
  for name in names:
    if name not in codecs:
      ax.plot([r[f"{name}_bytes"] for r in rows], psnr, "o-", label=f"token files, {name} prior")
  for codec, marker in codecs.items():
    if codec in names:
      ax.plot([r[f"{codec}_bytes"] for r in rows], psnr, marker, label=f"{codec.upper()} at equal PSNR")
  ax.set_xscale("log")
  ax.set_xlabel("bytes per image")
  ax.set_ylabel("PSNR (dB)")
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  _save(fig, path)
  plt.close(fig)


def psnr_vs_tokens(counts: Sequence[int], psnr: Sequence[float], path: str, *,
                   ssim: Sequence[float] | None = None, title: str = "quality vs tokens") -> None:
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 4))
  ax.plot(counts, psnr, "o-", color="C0", label="PSNR")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("tokens kept")
  ax.set_ylabel("PSNR (dB)", color="C0")
  ax.grid(True, alpha=0.3)
  if ssim is not None:
    ax2 = ax.twinx()
    ax2.plot(counts, ssim, "s--", color="C1", label="SSIM")
    ax2.set_ylabel("SSIM", color="C1")
  ax.set_title(title)
  _save(fig, path)
  plt.close(fig)
