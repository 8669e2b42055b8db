"""Preprocessing: hand-derived resize weights, PIL agreement, crops, flips, conversions, errors."""
import numpy as np
import pytest
from PIL import Image

from jaxtok.data import preprocess as pp


def test_resize_weights_by_hand():
  # 4 -> 2: centres 0.5 and 2.5, triangle of half-width 2 -> taps (.75, .75, .25) / 1.75.
  np.testing.assert_allclose(pp.resize_weights(4, 2), [[3 / 7, 3 / 7, 1 / 7, 0], [0, 1 / 7, 3 / 7, 3 / 7]],
                             rtol=1e-6)
  # 2 -> 4: centres -0.25, 0.25, 0.75, 1.25 with half-width 1; outside taps dropped (edge clamp).
  np.testing.assert_allclose(pp.resize_weights(2, 4), [[1, 0], [.75, .25], [.25, .75], [0, 1]], rtol=1e-6)
  # Without antialiasing a 2x down-scale takes the two middle taps only.
  np.testing.assert_allclose(pp.resize_weights(4, 2, antialias=False), [[.5, .5, 0, 0], [0, 0, .5, .5]])
  np.testing.assert_allclose(pp.resize_weights(5, 5), np.eye(5), atol=1e-7)


def test_resize_values_and_pil_agreement():
  row = np.array([0.0, 1.0, 2.0, 3.0], np.float32).reshape(1, 4, 1)
  np.testing.assert_allclose(pp.resize(row, (1, 2))[0, :, 0], [5 / 7, 16 / 7], rtol=1e-6)
  rng = np.random.default_rng(0)
  img = rng.random((23, 37)).astype(np.float32)
  for size in [(9, 14), (40, 50), (23, 11)]:
    ours = pp.resize(img[..., None], size)[..., 0]
    pil = np.asarray(Image.fromarray(img, mode="F").resize(size[::-1], Image.BILINEAR))
    np.testing.assert_allclose(ours, pil, atol=2e-5)


def test_resize_short_and_center_crop():
  img = np.zeros((20, 40, 3), np.uint8)
  assert pp.resize_short(img, 10).shape == (10, 20, 3)
  assert pp.resize_short(np.zeros((30, 12, 3)), 6).shape == (15, 6, 3)
  a = np.arange(5 * 6).reshape(5, 6, 1)
  np.testing.assert_array_equal(pp.center_crop(a, (3, 4))[..., 0], a[1:4, 1:5, 0])
  # offsets ((5 - 2) // 2, (6 - 2) // 2) = (1, 2)
  np.testing.assert_array_equal(pp.center_crop(a, 2)[..., 0], [[8, 9], [14, 15]])


def test_random_crop_and_flip():
  a = np.arange(8 * 9 * 3).reshape(8, 9, 3)
  crop = pp.random_crop(a, (3, 4), np.random.default_rng(5))
  r = np.random.default_rng(5)
  y, x = int(r.integers(0, 6)), int(r.integers(0, 6))
  np.testing.assert_array_equal(crop, a[y:y + 3, x:x + 4])
  np.testing.assert_array_equal(pp.random_flip(a, np.random.default_rng(0), p=1.0), a[:, ::-1])
  np.testing.assert_array_equal(pp.random_flip(a, np.random.default_rng(0), p=0.0), a)
  flips = [pp.random_flip(a, np.random.default_rng(s))[0, 0, 0] != 0 for s in range(200)]
  assert 60 < sum(flips) < 140


def test_random_resized_crop():
  img = np.random.default_rng(0).random((12, 12, 3)).astype(np.float32)
  # scale 1 and ratio 1 on a square image: the whole image, resized.
  out = pp.random_resized_crop(img, 6, np.random.default_rng(1), scale=(1.0, 1.0), ratio=(1.0, 1.0))
  np.testing.assert_allclose(out, pp.resize(img, 6), rtol=1e-6)
  for s in range(20):
    y, x, h, w = pp.crop_window(30, 50, np.random.default_rng(s))
    assert 0 <= y and y + h <= 30 and 0 <= x and x + w <= 50 and h > 0 and w > 0
  # No try fits (a 10 x 100 strip, full area at ratio 1): the central 10 x 10 square.
  assert pp.crop_window(10, 100, np.random.default_rng(0), scale=(1.0, 1.0), ratio=(1.0, 1.0)) == (0, 45, 10, 10)
  assert pp.random_resized_crop(np.zeros((30, 50, 3), np.uint8), (8, 6),
                                np.random.default_rng(0)).shape == (8, 6, 3)


def test_conversions_and_errors():
  np.testing.assert_allclose(pp.to_float(np.array([0, 51, 255], np.uint8)), [0, 0.2, 1.0], rtol=1e-6)
  assert pp.to_float(np.ones(2, np.float64)).dtype == np.float32
  assert pp.to_rgb(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
  assert pp.to_rgb(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)
  with pytest.raises(TypeError, match="uint8 or floating"):
    pp.to_float(np.ones(2, np.int32))
  with pytest.raises(ValueError, match="smaller than the crop"):
    pp.center_crop(np.zeros((4, 4, 3)), 5)
  with pytest.raises(ValueError, match=r"image must be an \[H, W, C\]"):
    pp.resize(np.zeros((4, 4)), 2)
  with pytest.raises(ValueError, match="size must be positive"):
    pp.resize(np.zeros((4, 4, 3)), 0)
  with pytest.raises(ValueError, match="p must lie"):
    pp.random_flip(np.zeros((4, 4, 3)), np.random.default_rng(0), p=2.0)
  with pytest.raises(ValueError, match="scale must satisfy"):
    pp.crop_window(4, 4, np.random.default_rng(0), scale=(0.5, 0.2))
