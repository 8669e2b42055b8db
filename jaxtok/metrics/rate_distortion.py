"""Rate-distortion of variable-length tokenizers, and of JPEG/WebP/AVIF at matched quality.

A tokenizer that keeps k tokens from a codebook of K codes spends k * log2(K) bits per image as raw ids
(`token_bytes`); real files coded with a prior (`jaxtok.codec`) are passed in as `coded_bytes`, every
byte of each file counted. One-D-Piece compares the rate with the bytes JPEG and WebP need to reach the
same quality on the same image; this module finds, per image, the smallest codec quality setting whose
PSNR reaches a target and reports its bytes (whole files, headers included).

Images here are uint8 [H, W, 3] numpy arrays (what the codecs see).
"""
from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np

def _available_codecs() -> tuple[str, ...]:
  try:
    from PIL import features  # pylint: disable=g-import-not-at-top
    return ("JPEG", "WEBP") + (("AVIF",) if features.check("avif") else ())
  except ImportError:
    return ("JPEG", "WEBP")


CODECS = _available_codecs()  # AVIF where this Pillow build has it (Pillow >= 11.3 wheels)


def token_bits(num_tokens: int, codebook_size: int) -> float:
  """Bits of k tokens from a K-code codebook: k * log2(K)."""
  if num_tokens < 0 or codebook_size < 2:
    raise ValueError(f"need num_tokens >= 0 and codebook_size >= 2, got {num_tokens} and {codebook_size}")
  return num_tokens * math.log2(codebook_size)


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
  """PSNR in dB between two uint8 images (data range 255); inf when identical."""
  if a.shape != b.shape:
    raise ValueError(f"images must have one shape, got {a.shape} and {b.shape}")
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def encode_with_codec(image: np.ndarray, codec: str, quality: int) -> tuple[int, np.ndarray]:
  """Compresses a uint8 [H, W, 3] image with Pillow; returns (bytes, decoded uint8 image)."""
  from PIL import Image

  if codec not in CODECS:
    raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format=codec, quality=int(quality))
  size = buf.tell()
  buf.seek(0)
  return size, np.asarray(Image.open(buf).convert("RGB"))


def codec_curve(image: np.ndarray, codec: str = "JPEG") -> list[tuple[int, float]]:
  """(bytes, PSNR) of `image` encoded at every quality 1..100 (index q - 1)."""
  out = []
  for q in range(1, 101):
    size, decoded = encode_with_codec(image, codec, q)
    out.append((size, psnr_uint8(image, decoded)))
  return out


def codec_bytes_at_psnr(image: np.ndarray, target_psnr: float, codec: str = "JPEG", *,
                        curve: list[tuple[int, float]] | None = None) -> dict:
  """Smallest-quality encoding of `image` whose PSNR is at least `target_psnr`.

  PSNR is not strictly monotone in the quality setting, so this scans every quality 1..100 (or reads
  `curve`, `codec_curve`'s output for this image and codec) and keeps the smallest file that reaches
  the target.

  Returns:
    {"bytes", "quality", "psnr", "reached"}: reached is False when even quality 100 falls short (then
    the quality-100 encoding is reported).
  """
  curve = curve if curve is not None else codec_curve(image, codec)
  best = None
  for q, (size, p) in enumerate(curve, start=1):
    if p >= target_psnr and (best is None or size < best["bytes"]):
      best = {"bytes": size, "quality": q, "psnr": p, "reached": True}
  size, p = curve[-1]
  return best if best is not None else {"bytes": size, "quality": 100, "psnr": p, "reached": False}


def rate_distortion_table(images: Sequence[np.ndarray], reconstructions: dict[int, Sequence[np.ndarray]],
                          codebook_size: int, codecs: Sequence[str] = CODECS,
                          coded_bytes: dict[str, dict[int, Sequence[int]]] | None = None,
                          tiles: int = 1) -> list[dict]:
  """Per token count: the tokenizer's rate and mean PSNR, and each codec's mean bytes at that PSNR.

  Args:
    images: originals, uint8 [H, W, 3] each.
    reconstructions: {num_tokens: reconstructions of `images` (uint8, same order)}.
    codebook_size: K, for the raw token rate.
    coded_bytes: {name: {num_tokens: file bytes per image}} of real token files (e.g. one entry per
      prior); each gives a `<name>_bytes` column (mean).
    tiles: tokenizer tiles per image (num_tokens counts per tile; the raw rate is tiles x that).

  Returns:
    One dict per token count (ascending): num_tokens, token_bytes (raw ids, k log2 K / 8),
    bits_per_pixel (of the raw ids), psnr, the `<name>_bytes` of coded_bytes, and for each codec
    `<codec>_bytes` (mean bytes per image needed to match the tokenizer's PSNR on that image) and
    `<codec>_reached` (fraction of images where the codec could match it at all).
  """
  rows = []
  h, w = images[0].shape[:2]
  curves = {codec: [codec_curve(a, codec) for a in images] for codec in codecs}
  for k in sorted(reconstructions):
    recs = reconstructions[k]
    if len(recs) != len(images):
      raise ValueError(f"reconstructions[{k}] has {len(recs)} images for {len(images)} originals")
    psnrs = [psnr_uint8(a, b) for a, b in zip(images, recs)]
    bits = tiles * token_bits(k, codebook_size)
    row = {"num_tokens": k, "token_bytes": bits / 8, "bits_per_pixel": bits / (h * w),
           "psnr": float(np.mean(psnrs))}
    for name, sizes in (coded_bytes or {}).items():
      if len(sizes[k]) != len(images):
        raise ValueError(f"coded_bytes[{name!r}][{k}] has {len(sizes[k])} sizes for {len(images)} images")
      row[f"{name}_bytes"] = float(np.mean(sizes[k]))
    for codec in codecs:
      found = [codec_bytes_at_psnr(a, p, codec, curve=curves[codec][i])
               for i, (a, p) in enumerate(zip(images, psnrs))]
      row[f"{codec.lower()}_bytes"] = float(np.mean([f["bytes"] for f in found]))
      row[f"{codec.lower()}_reached"] = float(np.mean([f["reached"] for f in found]))
    rows.append(row)
  return rows
