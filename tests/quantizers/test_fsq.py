"""Tests of finite scalar quantization: hand-derived codes and indices, grids, round trips, bf16,
gradients, transformations and input checks."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok import sharding
from jaxtok.quantizers import fsq

# Jitted once per (shape, levels): eager op-by-op dispatch is several times slower on CPU.
_quantize = jax.jit(fsq.quantize, static_argnums=1, static_argnames="symmetric")


def _bin_centres(levels, symmetric):
  """Inputs z that land in the middle of each code's bin, one row per code of the implicit codebook
  (inverting the bound by hand: z = atanh((r + offset) / half_l) - shift, or atanh(0.99 c))."""
  codes = np.asarray(fsq.implicit_codebook(levels, symmetric), np.float64)
  lv = np.asarray(levels, np.float64)
  if symmetric:
    return np.arctanh(0.99 * codes)
  hw = np.floor(lv / 2)
  half_l = (lv - 1) * 1.001 / 2
  offset = np.where(lv % 2 == 0, 0.5, 0.0)
  return np.arctanh((codes * hw + offset) / half_l) - np.arctanh(offset / half_l)


def test_codebook_size():
  assert fsq.codebook_size((8, 5, 5, 5)) == 1000
  assert fsq.codebook_size([8, 8, 8, 6, 5]) == 15360
  assert fsq.codebook_size((2, 2, 2)) == 8
  assert fsq.implicit_codebook((8, 5, 5, 5)).shape == (1000, 4)


def test_hand_values_8555():
  # L=5: half_l = 2.002, no shift: bound(z) = 2.002 tanh(z); the 0 | 0.5 boundary is at
  # tanh(z) = 0.5/2.002, z = atanh(0.24975) = 0.2552, so 0.25 -> 0 and 0.26 -> 0.5 (=1/2).
  # L=8: half_l = 3.5035, offset 0.5: bound(+10) = 3.0035 -> 3 -> 0.75; bound(-10) = -4.0035 -> -1.
  # bound(0) = tanh(atanh(0.5/3.5035)) 3.5035 - 0.5 = 0 for every L, so z = 0 -> code 0 -> digits
  # (4, 2, 2, 2) -> index 4 + 2*8 + 2*40 + 2*200 = 500.
  z = jnp.array([[10.0, -10.0, 0.26, 0.25],
                 [-10.0, 10.0, -0.26, 10.0],
                 [0.0, 0.0, 0.0, 0.0]])
  out = _quantize(z, (8, 5, 5, 5))
  np.testing.assert_array_equal(out.codes, [[0.75, -1.0, 0.5, 0.0],
                                            [-1.0, 1.0, -0.5, 1.0],
                                            [0.0, 0.0, 0.0, 0.0]])
  # digits (7,0,3,2) -> 7 + 0 + 3*40 + 2*200 = 527; (0,4,1,4) -> 0 + 32 + 40 + 800 = 872.
  np.testing.assert_array_equal(out.indices, [527, 872, 500])
  assert out.indices.dtype == jnp.int32 and out.codes.dtype == jnp.float32
  assert out.losses == {}
  # 3 distinct codes out of 1000.
  np.testing.assert_allclose(out.metrics["usage"], 3 / 1000)
  np.testing.assert_allclose(out.metrics["perplexity"], 3.0, rtol=1e-6)


def test_bound_is_zero_at_zero_and_rounds_into_range():
  for levels in [(3,), (4,), (5,), (6,), (7,), (8,), (16,)]:
    np.testing.assert_allclose(fsq.bound(jnp.zeros((1, 1)), levels), 0.0, atol=1e-6)
    b = fsq.bound(jnp.array([[-50.0], [50.0]]), levels)
    hw = levels[0] // 2
    np.testing.assert_array_equal(jnp.round(b)[:, 0], [-hw, levels[0] - 1 - hw])


_LEVEL_SETS = {
    False: {3: [-1, 0, 1], 4: [-1, -0.5, 0, 0.5], 5: [-1, -0.5, 0, 0.5, 1],
            6: [-1, -2 / 3, -1 / 3, 0, 1 / 3, 2 / 3], 8: [-1, -0.75, -0.5, -0.25, 0, 0.25, 0.5, 0.75]},
    True: {2: [-1, 1], 3: [-1, 0, 1], 4: [-1, -1 / 3, 1 / 3, 1],
           8: [-1, -5 / 7, -3 / 7, -1 / 7, 1 / 7, 3 / 7, 5 / 7, 1]},
}


@pytest.mark.parametrize("symmetric", [False, True])
def test_level_sets_and_sweep(symmetric):
  # One channel per level count (one compile per variant).
  levels = tuple(_LEVEL_SETS[symmetric])
  book = np.asarray(fsq.implicit_codebook(levels, symmetric))
  z = jnp.linspace(-8.0, 8.0, 4001)[:, None] * jnp.ones((1, len(levels)))
  codes = np.asarray(_quantize(z, levels, symmetric=symmetric).codes)
  for i, level in enumerate(levels):
    expected = _LEVEL_SETS[symmetric][level]
    np.testing.assert_allclose(np.unique(book[:, i]), expected, rtol=1e-6, atol=1e-7)
    # A sweep over z reaches every level, in increasing order.
    assert np.all(np.diff(codes[:, i]) >= 0)
    np.testing.assert_allclose(np.unique(codes[:, i]), expected, rtol=1e-6, atol=1e-7)


def test_symmetric_grid_is_exactly_symmetric_and_ties_go_up():
  for level in (2, 4, 6, 8):
    c = np.asarray(fsq.implicit_codebook((level,), True)[:, 0])
    np.testing.assert_array_equal(c, -c[::-1])
  # Even L, z = 0: (L-1)/2 + 0.5 = L/2 exactly, so the bracket is L/2 (the code just above 0).
  out = _quantize(jnp.zeros((1, 3)), (4, 8, 5), symmetric=True)
  np.testing.assert_allclose(out.codes, [[1 / 3, 1 / 7, 0.0]], rtol=1e-6)
  np.testing.assert_array_equal(out.indices, [2 + 4 * 4 + 2 * 32])


def test_first_dimension_least_significant():
  # levels (3, 5): index = d0 + 3 d1. Index 1 -> digits (1, 0) -> codes (0, -1); index 3 -> (0, 1)
  # -> (-1, -0.5); index 14 -> (2, 4) -> (1, 1).
  codes = fsq.indices_to_codes(jnp.array([1, 3, 14]), (3, 5))
  np.testing.assert_array_equal(codes, [[0.0, -1.0], [-1.0, -0.5], [1.0, 1.0]])
  np.testing.assert_array_equal(fsq.indices_to_digits(jnp.array([1, 3, 14]), (3, 5)),
                                [[1, 0], [0, 1], [2, 4]])
  np.testing.assert_array_equal(fsq.digits_to_indices(jnp.array([[2, 4], [1, 1]]), (3, 5)), [14, 4])


@pytest.mark.parametrize("levels,symmetric", [
    ((8, 5, 5, 5), False), ((3,), False), ((4, 3), False), ((7, 5, 5, 5, 5), False),
    ((8, 6, 5), False), ((2, 2, 3), True), ((8, 5, 5, 5), True), ((4, 4), True),
])
def test_round_trip_over_whole_codebook(levels, symmetric):
  k = math.prod(levels)
  all_idx = jnp.arange(k, dtype=jnp.int32)
  book = fsq.implicit_codebook(levels, symmetric)
  assert book.shape == (k, len(levels))
  assert len(np.unique(np.asarray(book), axis=0)) == k
  np.testing.assert_array_equal(fsq.codes_to_indices(book, levels, symmetric=symmetric), all_idx)
  out = _quantize(jnp.asarray(_bin_centres(levels, symmetric), jnp.float32), levels,
                     symmetric=symmetric)
  np.testing.assert_array_equal(out.indices, all_idx)
  # quantize codes are bitwise the codes of their indices.
  np.testing.assert_array_equal(out.codes, book)
  np.testing.assert_array_equal(fsq.indices_to_codes(out.indices, levels, symmetric=symmetric),
                                out.codes)
  np.testing.assert_allclose(out.metrics["usage"], 1.0)
  np.testing.assert_allclose(out.metrics["perplexity"], k, rtol=1e-4)


@pytest.mark.parametrize("symmetric", [False, True])
def test_bf16_gives_float32_indices_on_15360_grid(symmetric):
  # A bf16 index sum is wrong for most of these 15360 codes; quantization runs in float32.
  levels = (8, 8, 8, 6, 5)
  zb = jnp.asarray(_bin_centres(levels, symmetric), jnp.bfloat16)
  out = _quantize(zb, levels, symmetric=symmetric)
  ref = _quantize(zb.astype(jnp.float32), levels, symmetric=symmetric)
  np.testing.assert_array_equal(out.indices, np.arange(15360))
  np.testing.assert_array_equal(out.indices, ref.indices)
  assert out.codes.dtype == jnp.bfloat16 and out.indices.dtype == jnp.int32
  np.testing.assert_array_equal(out.codes, ref.codes.astype(jnp.bfloat16))


def test_straight_through_gradient():
  z = jnp.array([[0.0, 0.0, 0.7, -1.3], [2.0, -0.4, 0.1, 3.0]])
  w = jnp.array([[1.0, 2.0, -1.0, 0.5], [0.3, 1.0, 1.0, -2.0]])
  levels = (8, 5, 3, 6)
  g = jax.grad(lambda z: jnp.sum(_quantize(z, levels).codes * w))(z)
  lv = np.array(levels, np.float64)
  half_l = (lv - 1) * 1.001 / 2
  shift = np.arctanh(np.where(lv % 2 == 0, 0.5, 0.0) / half_l)
  # d code / d z = bound'(z) / (L//2) = half_l (1 - tanh^2(z + shift)) / (L//2): rounding passes the
  # gradient through unchanged. At z = 0 for L=5: 2.002 / 2 = 1.001.
  expected = w * half_l * (1 - np.tanh(np.asarray(z) + shift) ** 2) / np.floor(lv / 2)
  np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g[0, 1], 2.0 * 1.001, rtol=1e-6)
  # Symmetric: code = 2 floor_ste(v)/(L-1) - 1 with v = (L-1)(tanh z + 1)/2 + 0.5 -> tanh'(z).
  gs = jax.grad(lambda z: jnp.sum(_quantize(z, levels, symmetric=True).codes * w))(z)
  np.testing.assert_allclose(gs, w * (1 - np.tanh(np.asarray(z)) ** 2), rtol=1e-5, atol=1e-6)


def test_large_codebook_uses_per_dimension_metrics():
  levels = (8,) * 7  # 2**21 codes > MAX_HISTOGRAM_CODES
  z = jnp.zeros((3, 7))
  out = _quantize(z, levels)
  np.testing.assert_allclose(out.metrics["usage"], 1 / 8)
  np.testing.assert_allclose(out.metrics["perplexity"], 1.0)
  z = jnp.stack([jnp.full((7,), 5.0), jnp.full((7,), -5.0)])
  out = _quantize(z, levels)
  # Every dimension uses 2 of 8 levels equally: per-dim perplexity 2, product 2**7.
  np.testing.assert_allclose(out.metrics["usage"], 2 / 8)
  np.testing.assert_allclose(out.metrics["dim_usage"], 2 / 8)
  np.testing.assert_allclose(out.metrics["perplexity"], 128.0, rtol=1e-5)


def test_jit_vmap_grad_and_sharded():
  levels = (8, 5, 5, 5)
  z = jax.random.normal(jax.random.key(0), (16, 3, 4)) * 2
  ref = fsq.quantize(z, levels)  # eager reference
  f = jax.jit(lambda z: _quantize(z, levels))
  out = f(z)
  np.testing.assert_array_equal(out.codes, ref.codes)
  np.testing.assert_array_equal(out.indices, ref.indices)
  vm = jax.vmap(lambda z: _quantize(z, levels).indices)(z)
  np.testing.assert_array_equal(vm, ref.indices)
  g = jax.jit(jax.grad(lambda z: jnp.sum(_quantize(z, levels, symmetric=True).codes)))(z)
  np.testing.assert_allclose(g, 1 - jnp.tanh(z) ** 2, rtol=1e-5, atol=1e-6)
  mesh = sharding.make_mesh()
  zs = jax.device_put(z, sharding.batch_sharding(mesh, z.ndim))
  assert len(zs.sharding.device_set) == 8
  out = f(zs)
  np.testing.assert_array_equal(out.codes, ref.codes)
  np.testing.assert_array_equal(out.indices, ref.indices)
  for key in ref.metrics:
    np.testing.assert_allclose(out.metrics[key], ref.metrics[key], rtol=1e-6)


def test_validation_names_the_argument():
  z = jnp.zeros((2, 4))
  with pytest.raises(ValueError, match=r"levels\[0\] must be >= 2, got 1"):
    fsq.quantize(z, (1, 5, 5, 5))
  with pytest.raises(TypeError, match=r"levels\[1\] must be an int, got float"):
    fsq.quantize(z, (8, 5.0, 5, 5))
  with pytest.raises(ValueError, match=r"levels must hold at least one level"):
    fsq.quantize(z, ())
  with pytest.raises(TypeError, match=r"levels must be a sequence"):
    fsq.quantize(z, 8)
  with pytest.raises(ValueError, match=r"levels\[1\] = 2 needs symmetric=True"):
    fsq.quantize(jnp.zeros((2, 2)), (3, 2))
  _quantize(jnp.zeros((2, 2)), (3, 2), symmetric=True)
  with pytest.raises(ValueError, match=r"prod\(levels\) < 2\*\*31"):
    fsq.quantize(jnp.zeros((2, 4)), (256, 256, 256, 128))
  with pytest.raises(ValueError, match=r"z must have last dimension 3, got shape \(2, 4\)"):
    fsq.quantize(z, (8, 5, 5))
  with pytest.raises(TypeError, match=r"z must have a floating dtype"):
    fsq.quantize(jnp.zeros((2, 4), jnp.int32), (8, 5, 5, 5))
  with pytest.raises(TypeError, match=r"symmetric must be a bool"):
    fsq.quantize(z, (8, 5, 5, 5), symmetric="yes")
  with pytest.raises(TypeError, match=r"indices must have an integer dtype"):
    fsq.indices_to_codes(jnp.zeros((3,)), (8, 5))
  with pytest.raises(ValueError, match=r"codes must have last dimension 2"):
    fsq.codes_to_indices(jnp.zeros((3, 4)), (8, 5))
