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


def _reference_weights(in_size, out_size, antialias=True):
  """float64 [out, in], written out from the definition in `resize_weights`'s docstring, one tap at a
  time: triangle of half-width s = max(in/out, 1) (1 without antialiasing) around the output pixel's
  centre (i + 0.5) * in/out - 0.5, taps outside the image dropped, each row normalised."""
  scale = in_size / out_size
  s = max(scale, 1.0) if antialias else 1.0
  w = np.zeros((out_size, in_size))
  for i in range(out_size):
    c = (i + 0.5) * scale - 0.5
    for j in range(in_size):
      w[i, j] = max(0.0, 1.0 - abs(j - c) / s)
    w[i] /= w[i].sum()
  return w


def _reference_resize(image, size, antialias=True):
  """The old one-step contraction, in float64: out[i, l, c] = sum_jk wy[i, j] x[j, k, c] wx[l, k]
  (numpy picks the pairwise order; in float64 the order is far below the float32 tolerance)."""
  wy = _reference_weights(image.shape[0], size[0], antialias)
  wx = _reference_weights(image.shape[1], size[1], antialias)
  return np.einsum("ij,jkc,lk->ilc", wy, np.asarray(image, np.float64), wx, optimize=True), wy, wx


def _assert_matches_reference(image, size, antialias=True, xp=np):
  out = np.asarray(pp.resize(image, size, antialias=antialias, xp=xp))
  ref, wy, wx = _reference_resize(image, size, antialias)
  assert out.dtype == np.float32 and out.shape == ref.shape
  # Each output is a convex combination (weights >= 0, summing to 1) computed in float32 in two
  # passes: one pass of n nonzero taps errs by at most ~(n + 1) unit roundoffs times max|x| (n for
  # the sums, 1 for the weights rounded to float32); the passes add.
  taps = int((wy > 0).sum(1).max() + (wx > 0).sum(1).max())
  bound = (taps + 2) * 2.0**-24 * max(float(np.abs(np.asarray(image, np.float64)).max()), 1e-30)
  np.testing.assert_allclose(out, ref, rtol=0, atol=bound)
  return out


def test_resize_weights_match_the_definition():
  for sizes in [(23, 9), (9, 23), (7, 7), (1, 5), (5, 1), (300, 17), (17, 300), (2, 3)]:
    for aa in (True, False):
      np.testing.assert_allclose(pp.resize_weights(*sizes, antialias=aa), _reference_weights(*sizes, aa),
                                 rtol=0, atol=2.0**-24)


def test_resize_matches_the_one_step_contraction():
  rng = np.random.default_rng(3)
  u8 = rng.integers(0, 256, (97, 203, 3), np.uint8)
  cases = [
      (u8, (33, 50)),  # down-scale, several blocks of output rows and columns
      (u8, (256, 341)),  # up-scale of both sides, non-square
      (u8, (40, 600)),  # down-scale rows, up-scale columns
      (u8[::2, ::3], (20, 21)),  # a strided view (photos are down-scaled by slicing)
      (u8[:, ::-1], (11, 13)),  # a flipped view
      (rng.random((31, 17, 1)).astype(np.float32), (8, 40)),  # one channel, float
      (rng.standard_normal((12, 9, 4)), (5, 5)),  # four channels, float64 with negative values
  ]
  for image, size in cases:
    _assert_matches_reference(image, size)
    _assert_matches_reference(image, size, antialias=False)


def test_resize_edge_sizes():
  rng = np.random.default_rng(4)
  for shape, size in [((1, 1, 3), (5, 7)), ((1, 9, 3), (1, 4)), ((9, 1, 3), (1, 1)),
                      ((1, 6, 3), (3, 2)), ((7, 1, 3), (7, 4)), ((2, 2, 3), (1, 1)), ((5, 3, 3), (1, 8))]:
    image = rng.integers(0, 256, shape, np.uint8)
    out = _assert_matches_reference(image, size)
    if shape[:2] == (1, 1):
      # One input pixel: every output pixel is that pixel.
      np.testing.assert_array_equal(out, np.broadcast_to(image.astype(np.float32), out.shape))
  # An unchanged size is an exact float32 copy (the weights are the identity); one changed axis
  # leaves the other untouched.
  image = rng.integers(0, 256, (6, 8, 3), np.uint8)
  np.testing.assert_array_equal(pp.resize(image, (6, 8)), image.astype(np.float32))
  wide = pp.resize(image, (6, 3))
  np.testing.assert_array_equal(wide[:, :, 0], pp.resize(image[:, :, :1], (6, 3))[:, :, 0])
  _assert_matches_reference(image, (6, 3))


def test_resize_weights_cache_is_read_only_and_bounded():
  w = pp._plan(45, 16, True).weights
  assert pp._plan(45, 16, True).weights is w and not w.flags.writeable
  np.testing.assert_array_equal(w, pp.resize_weights(45, 16))
  assert pp.resize_weights(45, 16).flags.writeable  # the public function still returns a new array
  for n in range(2, 2 + 2 * pp._PLAN_CACHE):
    pp._plan(n, 3, False)
  assert len(pp._plans) == pp._PLAN_CACHE
  pp._plan(4000, 300, True)  # over _PLAN_CACHE_SIZE weights: not kept
  assert (4000, 300, True) not in pp._plans


def test_resize_uint8_equals_float_of_the_same_values():
  rng = np.random.default_rng(5)
  u8 = rng.integers(0, 256, (45, 38, 3), np.uint8)
  for size in [(16, 16), (64, 50), (45, 20)]:
    # uint8 -> float32 is exact, so both inputs take the same arithmetic: equal bit for bit, and
    # the uint8 result stays in [0, 255] (not rescaled).
    out = pp.resize(u8, size)
    np.testing.assert_array_equal(out, pp.resize(u8.astype(np.float32), size))
    assert out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 255.0


def test_resize_with_jax_numpy_matches_numpy():
  import jax.numpy as jnp
  image = np.random.default_rng(6).random((21, 30, 3)).astype(np.float32)
  assert pp.resize(image, (8, 11), xp=jnp).dtype == jnp.float32
  for size in [(8, 11), (40, 33)]:
    _assert_matches_reference(image, size, xp=jnp)


def _numpy_blas_threads(threadpoolctl):
  """Thread counts of the BLAS libraries numpy ships (others, e.g. scipy's, may load later)."""
  libs = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
  return [i["num_threads"] for i in libs if "numpy" in i["filepath"]] or [i["num_threads"] for i in libs]


def test_resize_runs_blas_single_threaded_and_restores_it(monkeypatch):
  threadpoolctl = pytest.importorskip("threadpoolctl")
  before = _numpy_blas_threads(threadpoolctl)
  if not before:
    pytest.skip("threadpoolctl sees no BLAS library here")
  seen = []
  real = pp._resample_rows

  def spy(*args):
    seen.append(_numpy_blas_threads(threadpoolctl))
    return real(*args)

  monkeypatch.setattr(pp, "_resample_rows", spy)
  image = np.random.default_rng(7).integers(0, 256, (60, 40, 3), np.uint8)
  expected = pp.resize(image, (20, 30))
  assert seen and all(n == 1 for n in seen[0])
  assert _numpy_blas_threads(threadpoolctl) == before
  # Concurrent resizes (grain's reader threads) share the limit and give identical results; the
  # thread count is restored once the last one ends.
  import concurrent.futures
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    outs = list(pool.map(lambda _: pp.resize(image, (20, 30)), range(16)))
  assert all(np.array_equal(o, expected) for o in outs)
  assert _numpy_blas_threads(threadpoolctl) == before
  assert pp._blas["users"] == 0
