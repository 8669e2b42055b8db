"""Tests of TokenBridge's training-free dimension-wise Gaussian-bin quantizer."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxtok import sharding
from jaxtok.quantizers import dimwise


def _phi(x):
  return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _cdf(x):
  return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _reference_indices(x, values, lo, hi, r):
  """TokenBridge's rule, literally: map [lo, hi] onto [-r, r], clamp, argmin |s - v| (numpy)."""
  s = np.clip((np.asarray(x, np.float64) - lo) / (hi - lo) * (2 * r) - r, -r, r)
  return np.argmin(np.abs(s[..., None] - np.asarray(values, np.float64)), axis=-1)


def test_six_bit_tokenbridge_hand_values():
  spec = dimwise.standard_normal(16)  # bits 6, std_range 3, value_range 5 (TokenBridge defaults)
  assert spec.values.shape == (16, 64) and spec.boundaries.shape == (16, 63)
  latent = np.asarray(spec.values[3]) * 5.0 / 3.0
  # Values checked by running TokenBridge's post_training_quantize (reference notes A.6).
  np.testing.assert_allclose(latent[:3], [-4.0618, -3.3237, -2.9403], atol=1e-4)
  np.testing.assert_allclose(latent[-3:], [2.9403, 3.3237, 4.0618], atol=1e-4)
  np.testing.assert_allclose(spec.values[0, [0, -1]], [-2.437, 2.437], atol=1e-3)
  np.testing.assert_allclose(spec.scale, np.full(16, 5.0 / 3.0), rtol=1e-7)
  np.testing.assert_array_equal(spec.shift, np.zeros(16))
  # Dequantizing the outermost indices gives those latent values.
  codes = dimwise.indices_to_codes(jnp.array([[0] * 16, [63] * 16], jnp.int32), spec)
  np.testing.assert_allclose(codes[:, 0], [-4.0618, 4.0618], atol=1e-4)


def test_one_and_two_bit_hand_values():
  # 1 bit: bins [-r, 0], [0, r]; the upper mean is (phi(0) - phi(r)) / (Phi(r) - 1/2).
  r = 3.0
  boundaries, values = dimwise.gaussian_bins(1, r)
  v = (_phi(0.0) - _phi(r)) / (_cdf(r) - 0.5)
  np.testing.assert_allclose(v, 0.79116, atol=1e-5)  # just under sqrt(2/pi) = 0.79788 (r = inf)
  np.testing.assert_allclose(values, [-v, v], rtol=1e-6)
  np.testing.assert_array_equal(boundaries, [0.0])
  # With a huge range the 1-bit values are the half-normal means +-sqrt(2/pi).
  np.testing.assert_allclose(dimwise.gaussian_bins(1, 40.0)[1], [-math.sqrt(2 / math.pi),
                                                                 math.sqrt(2 / math.pi)], rtol=1e-6)
  # 2 bits: quartiles q = Phi^-1(3/4) = 0.6744897501960817; bins [0, q] (mass 1/4) and [q, r].
  q = 0.6744897501960817
  boundaries, values = dimwise.gaussian_bins(2, r)
  inner = (_phi(0.0) - _phi(q)) / 0.25
  outer = (_phi(q) - _phi(r)) / (_cdf(r) - 0.75)
  np.testing.assert_allclose(boundaries, [-q, 0.0, q], atol=1e-7)
  np.testing.assert_allclose(values, [-outer, -inner, inner, outer], rtol=1e-6)
  np.testing.assert_allclose([inner, outer], [0.32466, 1.26018], atol=1e-5)


@pytest.mark.parametrize("bits,std_range", [(3, 3.0), (6, 3.0), (8, 2.5), (10, 3.0)])
def test_bins_match_scipy(bits, std_range):
  stats = pytest.importorskip("scipy.stats")
  n = 2**bits
  edges = np.clip(stats.norm.ppf(np.linspace(0, 1, n + 1)), -std_range, std_range)
  a, b = edges[:-1], edges[1:]
  boundaries, values = dimwise.gaussian_bins(bits, std_range)
  np.testing.assert_allclose(boundaries, edges[1:-1], atol=2e-7)
  nonempty = b > a
  with np.errstate(divide="ignore", invalid="ignore"):
    ref = (stats.norm.pdf(a) - stats.norm.pdf(b)) / (stats.norm.cdf(b) - stats.norm.cdf(a))
  np.testing.assert_allclose(np.asarray(values)[nonempty], ref[nonempty], atol=3e-7)
  # Empty (clamped) bins [a, a] get the value a, not TokenBridge's 0.
  np.testing.assert_array_equal(np.asarray(values)[~nonempty], a[~nonempty])
  # Bins clamp to empty exactly when 1/L < Phi(-r): here for (8, 2.5) and (10, 3).
  assert nonempty.all() == (1 / n >= stats.norm.cdf(-std_range))


@pytest.mark.parametrize("bits", [1, 2, 4, 6, 10])
def test_boundaries_and_values_monotone_and_inside_their_bins(bits):
  boundaries, values = map(np.asarray, dimwise.gaussian_bins(bits))
  edges = np.concatenate([[-3.0], boundaries, [3.0]])
  assert np.all(np.diff(boundaries) >= 0) and np.all(np.diff(values) >= 0)
  assert np.all(values >= edges[:-1]) and np.all(values <= edges[1:])
  np.testing.assert_array_equal(values, -values[::-1])  # exactly antisymmetric
  if bits <= 6:
    assert np.all(np.diff(values) > 0)


def test_quantize_is_tokenbridge_nearest_value():
  spec = dimwise.standard_normal(5, bits=6)
  z = jax.random.normal(jax.random.key(0), (4, 7, 5)) * 3.0  # many values beyond +-5 get clipped
  out = dimwise.quantize(z, spec)
  assert out.indices.dtype == jnp.int32 and out.indices.shape == (4, 7, 5)
  ref = _reference_indices(z, spec.values[0], -5.0, 5.0, 3.0)
  np.testing.assert_array_equal(out.indices, ref)
  assert out.indices.min() >= 0 and out.indices.max() < 64
  assert (out.indices == 0).any() and (out.indices == 63).any()
  np.testing.assert_allclose(out.codes, np.asarray(spec.values[0])[ref] * 5.0 / 3.0, rtol=1e-6)
  assert out.losses == {}


def test_nearest_value_not_interval():
  # A point just inside the outermost Gaussian bin but nearer the second value takes index 1.
  spec = dimwise.standard_normal(1, bits=6, value_range=3.0)  # scale 1: latent = standard units
  b1 = float(spec.boundaries[0, 0])  # -2.1538: edge between bins 0 and 1
  v0, v1 = float(spec.values[0, 0]), float(spec.values[0, 1])
  x = b1 - 0.01  # in bin 0 by interval, but |x - v1| < |x - v0|
  assert abs(x - v1) < abs(x - v0)
  out = dimwise.quantize(jnp.array([[x], [(v0 + v1) / 2 - 1e-4], [(v0 + v1) / 2 + 1e-4]]), spec)
  np.testing.assert_array_equal(out.indices[:, 0], [1, 0, 1])


def test_round_trip_and_codes_exact():
  spec = dimwise.standard_normal(3, bits=6)
  idx = jax.random.randint(jax.random.key(1), (6, 3), 0, 64, dtype=jnp.int32)
  codes = dimwise.indices_to_codes(idx, spec)
  out = dimwise.quantize(codes, spec)
  np.testing.assert_array_equal(out.indices, idx)
  np.testing.assert_array_equal(out.codes, codes)  # straight-through value is exactly the code
  z = jax.random.normal(jax.random.key(2), (6, 3)) * 2.0
  out = dimwise.quantize(z, spec)
  np.testing.assert_array_equal(out.codes, dimwise.indices_to_codes(out.indices, spec))


def test_error_bounded_by_bin_width_inside_the_range():
  spec = dimwise.standard_normal(2, bits=6, value_range=3.0)
  s = jnp.linspace(-2.999, 2.999, 4001)[:, None] * jnp.ones((1, 2))
  out = dimwise.quantize(s, spec)
  edges = np.concatenate([[-3.0], np.asarray(spec.boundaries[0]), [3.0]])
  s_np = np.asarray(s[:, 0])
  home = np.clip(np.searchsorted(edges, s_np, side="right") - 1, 0, 63)  # Gaussian bin holding s
  err = np.abs(np.asarray(out.codes[:, 0]) - s_np)
  # The nearest value is at least as near as the bin's own mean, which lies inside the bin.
  width = edges[home + 1] - edges[home]
  assert np.all(err <= width + 1e-6)
  assert np.all(err <= np.abs(np.asarray(spec.values[0])[home] - s_np) + 1e-6)
  # Beyond the range, values clip to the outermost code.
  far = dimwise.quantize(jnp.array([[-50.0, 50.0]]), spec)
  np.testing.assert_array_equal(far.indices, [[0, 63]])


def test_fit_reproduces_standard_bins_after_standardisation():
  rng = np.random.default_rng(0)
  mean = np.array([1.5, -2.0, 0.0], np.float32)
  std = np.array([0.5, 3.0, 1.0], np.float32)
  x = (rng.standard_normal((512, 3)) * std + mean).astype(np.float32)
  spec = dimwise.fit(jnp.asarray(x), bits=4, std_range=3.0)
  np.testing.assert_allclose(spec.shift, x.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(spec.scale, x.std(0), rtol=1e-5)
  np.testing.assert_array_equal(spec.values[1], dimwise.gaussian_bins(4)[1])
  out = dimwise.quantize(jnp.asarray(x), spec)
  standardised = (x - x.mean(0)) / x.std(0)
  ref = _reference_indices(standardised, spec.values[0], -3.0, 3.0, 3.0)
  np.testing.assert_array_equal(out.indices, ref)
  # On Gaussian data every level is used, each roughly 1/16 of the time.
  counts = np.stack([np.bincount(out.indices[:, j], minlength=16) for j in range(3)])
  assert counts.min() > 512 / 16 * 0.4 and counts.max() < 512 / 16 * 1.8
  # A constant dimension gets scale 1; its samples sit at standard value 0, exactly halfway between
  # the two middle values 31 and 32 of 64, and the tie goes to the lower index (as argmin).
  const = dimwise.fit(jnp.concatenate([jnp.asarray(x[:, :1]), jnp.full((512, 1), 7.0)], -1))
  np.testing.assert_allclose(const.scale[1], 1.0)
  np.testing.assert_array_equal(dimwise.quantize(jnp.full((2, 2), 7.0), const).indices[:, 1], [31, 31])


def test_metrics_per_dimension_averaged():
  spec = dimwise.standard_normal(2, bits=2, value_range=3.0)
  v = np.asarray(spec.values[0])
  # Dimension 0 uses levels 0 and 3 equally; dimension 1 uses level 1 only.
  z = jnp.array([[v[0], v[1]], [v[3], v[1]], [v[0], v[1]], [v[3], v[1]]], jnp.float32)
  out = dimwise.quantize(z, spec)
  np.testing.assert_array_equal(out.indices, [[0, 1], [3, 1], [0, 1], [3, 1]])
  np.testing.assert_allclose(out.metrics["usage"], (2 / 4 + 1 / 4) / 2)
  np.testing.assert_allclose(out.metrics["perplexity"], (2.0 + 1.0) / 2, rtol=1e-6)


def test_jit_vmap_grad_and_bf16():
  spec = dimwise.standard_normal(4, bits=6)
  z = jax.random.normal(jax.random.key(3), (3, 5, 4)) * 2.0
  eager = dimwise.quantize(z, spec)
  jitted = jax.jit(dimwise.quantize)(z, spec)
  np.testing.assert_array_equal(jitted.indices, eager.indices)
  np.testing.assert_array_equal(jitted.codes, eager.codes)
  mapped = jax.vmap(lambda x: dimwise.quantize(x, spec).indices)(z)
  np.testing.assert_array_equal(mapped, eager.indices)
  w = jax.random.normal(jax.random.key(4), z.shape)
  grad = jax.grad(lambda x: jnp.sum(dimwise.quantize(x, spec).codes * w))(z)
  np.testing.assert_array_equal(grad, w)  # straight-through: identity gradient
  zb = z.astype(jnp.bfloat16)
  outb = dimwise.quantize(zb, spec)
  assert outb.codes.dtype == jnp.bfloat16
  np.testing.assert_array_equal(outb.indices, dimwise.quantize(zb.astype(jnp.float32), spec).indices)


def test_sharded_equals_unsharded():
  mesh = sharding.make_mesh((("data", 8),))
  spec = dimwise.standard_normal(4, bits=6)
  z = jax.random.normal(jax.random.key(5), (8, 6, 4)) * 2.0
  zs = jax.device_put(z, NamedSharding(mesh, P("data")))
  fn = jax.jit(dimwise.quantize)
  ref, out = fn(z, spec), fn(zs, spec)
  np.testing.assert_array_equal(out.indices, ref.indices)
  np.testing.assert_array_equal(out.codes, ref.codes)
  for k in ref.metrics:
    np.testing.assert_allclose(out.metrics[k], ref.metrics[k], rtol=1e-6)


def test_bad_arguments_name_the_argument():
  spec = dimwise.standard_normal(4)
  with pytest.raises(ValueError, match=r"z must have last dimension 4, got shape \(2, 3\)"):
    dimwise.quantize(jnp.zeros((2, 3)), spec)
  with pytest.raises(TypeError, match="z must have a floating dtype"):
    dimwise.quantize(jnp.zeros((2, 4), jnp.int32), spec)
  with pytest.raises(TypeError, match="spec must be a DimwiseSpec"):
    dimwise.quantize(jnp.zeros((2, 4)), (1, 2))
  with pytest.raises(ValueError, match="bits must be >= 1, got 0"):
    dimwise.standard_normal(4, bits=0)
  with pytest.raises(ValueError, match="bits must be <= 16, got 17"):
    dimwise.standard_normal(4, bits=17)
  with pytest.raises(TypeError, match="bits must be an int"):
    dimwise.gaussian_bins(6.0)
  with pytest.raises(ValueError, match="std_range must be > 0.0, got -1.0"):
    dimwise.standard_normal(4, std_range=-1.0)
  with pytest.raises(ValueError, match="value_range must be > 0.0, got 0.0"):
    dimwise.standard_normal(4, value_range=0.0)
  with pytest.raises(ValueError, match="dim must be >= 1, got 0"):
    dimwise.standard_normal(0)
  with pytest.raises(TypeError, match="indices must have an integer dtype"):
    dimwise.indices_to_codes(jnp.zeros((2, 4)), spec)
  with pytest.raises(ValueError, match=r"indices must have shape \[..., 4\], got shape \(2, 3\)"):
    dimwise.indices_to_codes(jnp.zeros((2, 3), jnp.int32), spec)
  with pytest.raises(ValueError, match=r"latents must have rank >= 2"):
    dimwise.fit(jnp.zeros((5,)))
  bad = spec._replace(scale=jnp.ones((3,)))
  with pytest.raises(ValueError, match=r"spec.scale must have shape \(4,\), got \(3,\)"):
    dimwise.quantize(jnp.zeros((2, 4)), bad)
