"""Tests of token rates and codec bytes at matched PSNR."""
import math

import numpy as np
import pytest

from jaxtok.metrics import rate_distortion as rd


def _photo():
  from sklearn.datasets import load_sample_image
  return load_sample_image("china.jpg")[100:164, 200:264]


def test_token_bits_hand_values():
  assert rd.token_bits(32, 4096) == 32 * 12
  assert rd.token_bits(256, 64000) == pytest.approx(256 * math.log2(64000))
  with pytest.raises(ValueError):
    rd.token_bits(3, 1)


def test_codec_reaches_target_with_fewest_bytes():
  img = _photo()
  low = rd.codec_bytes_at_psnr(img, 25.0, "JPEG")
  high = rd.codec_bytes_at_psnr(img, 30.0, "JPEG")
  assert low["reached"] and high["reached"]
  assert low["psnr"] >= 25.0 and high["psnr"] >= 30.0
  assert low["bytes"] < high["bytes"]
  # No quality setting with fewer bytes reaches the target (the search is exhaustive).
  for q in range(1, 101):
    size, dec = rd.encode_with_codec(img, "JPEG", q)
    if size < low["bytes"]:
      assert rd.psnr_uint8(img, dec) < 25.0


def test_unreachable_target_is_reported():
  r = rd.codec_bytes_at_psnr(_photo(), 200.0, "WEBP")
  assert not r["reached"] and r["quality"] == 100


def test_rate_distortion_table_rows():
  img = _photo()
  noisy = np.clip(img.astype(int) + np.random.default_rng(0).integers(-20, 21, img.shape), 0, 255)
  rows = rd.rate_distortion_table([img], {64: [img], 8: [noisy.astype(np.uint8)]}, 4096)
  assert [r["num_tokens"] for r in rows] == [8, 64]
  assert rows[0]["token_bytes"] == 8 * 12 / 8
  assert rows[1]["psnr"] == float("inf") and rows[1]["jpeg_reached"] == 0.0
  assert rows[0]["jpeg_reached"] == 1.0 and rows[0]["jpeg_bytes"] > 0


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="codec must be one of"):
    rd.encode_with_codec(_photo(), "PNG", 50)
  with pytest.raises(ValueError, match="image must be uint8"):
    rd.encode_with_codec(_photo().astype(np.float32), "JPEG", 50)
