"""Tests of the blocked nearest-code / k-NN search against numpy brute force."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok import sharding
from jaxtok.quantizers import search


def _np_dist(z, c, metric):
  z = np.asarray(z, np.float64)
  c = np.asarray(c, np.float64)
  if metric == "cosine":
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
  return ((z[:, None, :] - c[None, :, :]) ** 2).sum(-1)


def _random(n, k, d, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(k, d)).astype(np.float32)


def test_hand_values_two_codes_1d():
  # Codes at -1 and 2: the midpoint 0.5 is 2.25 from both (tie -> index 0); 0.4 is 1.96 from -1 and
  # 2.56 from 2; 0.6 the reverse.
  codebook = jnp.array([[-1.0], [2.0]])
  z = jnp.array([[-3.0], [0.5], [0.4], [0.6], [5.0]])
  idx, d = search.nearest(z, codebook)
  np.testing.assert_array_equal(idx, [0, 0, 0, 1, 1])
  np.testing.assert_allclose(d, [4.0, 2.25, 1.96, 1.96, 9.0], rtol=1e-6)
  assert idx.dtype == jnp.int32 and d.dtype == jnp.float32
  idx, d = search.knn(z, codebook, 2)
  np.testing.assert_array_equal(idx, [[0, 1], [0, 1], [0, 1], [1, 0], [1, 0]])
  np.testing.assert_allclose(d[:, 1], [25.0, 2.25, 2.56, 2.56, 36.0], rtol=1e-6)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("budget", [2**24, 64, 9, 1])
def test_nearest_and_knn_match_numpy(metric, budget):
  # 37 rows x 23 codes: budget 64 cuts rows only (2 rows per chunk), 9 and 1 also cut the codebook.
  z, c = _random(37, 23, 5)
  d = _np_dist(z, c, metric)
  idx, dist = search.nearest(z, c, metric=metric, max_block_elements=budget)
  np.testing.assert_array_equal(idx, d.argmin(1))
  np.testing.assert_allclose(dist, d.min(1), rtol=1e-5, atol=1e-5)
  kidx, kdist = search.knn(z, c, 4, metric=metric, max_block_elements=budget)
  np.testing.assert_array_equal(kidx, np.argsort(d, axis=1, kind="stable")[:, :4])
  np.testing.assert_allclose(kdist, np.sort(d, axis=1)[:, :4], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("budget", [2**24, 7, 3, 1])
def test_ties_resolve_to_lowest_index_across_blocks(budget):
  # Integer data: distances are exact in float32 and ties are frequent (duplicate codes included).
  rng = np.random.default_rng(1)
  z = rng.integers(-2, 3, size=(50, 2)).astype(np.float32)
  c = rng.integers(-2, 3, size=(30, 2)).astype(np.float32)
  c[17] = c[3]  # exact duplicate in a later block: must never win
  d = _np_dist(z, c, "euclidean")
  idx, dist = search.nearest(z, c, max_block_elements=budget)
  np.testing.assert_array_equal(idx, d.argmin(1))
  np.testing.assert_array_equal(dist, d.min(1))
  assert not np.any(np.asarray(idx) == 17)
  kidx, kdist = search.knn(z, c, 6, max_block_elements=budget)
  np.testing.assert_array_equal(kidx, np.argsort(d, axis=1, kind="stable")[:, :6])
  np.testing.assert_array_equal(kdist, np.sort(d, axis=1)[:, :6])
  # Same answer as jnp.argmin on the full matrix (the documented tie rule).
  full = jnp.sum(jnp.square(z[:, None] - c[None]), -1)
  np.testing.assert_array_equal(idx, jnp.argmin(full, axis=1))


def test_knn_k_larger_than_block():
  # Budget 4 with 10 codes and 3 rows -> 2 rows x 2 codes; k=7 exceeds every block.
  z, c = _random(3, 10, 3, seed=2)
  d = _np_dist(z, c, "euclidean")
  kidx, _ = search.knn(z, c, 7, max_block_elements=4)
  np.testing.assert_array_equal(kidx, np.argsort(d, axis=1, kind="stable")[:, :7])
  kidx, _ = search.knn(z, c, 10, max_block_elements=4)
  np.testing.assert_array_equal(kidx, np.argsort(d, axis=1, kind="stable"))


def test_large_codebook_2_pow_18():
  z, c = _random(5, 2**18, 3, seed=3)
  d = _np_dist(z, c, "euclidean")
  # Default budget (the whole [5, K] fits) and a budget that forces codebook blocks.
  for budget in (2**24, 2**16):
    idx, dist = search.nearest(z, c, max_block_elements=budget)
    np.testing.assert_allclose(dist, d.min(1), rtol=1e-4, atol=1e-5)
    # Random float data: the winner is unique up to float32 rounding; check index where unambiguous.
    srt = np.sort(d, axis=1)
    clear = srt[:, 1] - srt[:, 0] > 1e-4
    np.testing.assert_array_equal(np.asarray(idx)[clear], d.argmin(1)[clear])
  kidx, _ = search.knn(z, c, 3, max_block_elements=2**16)
  np.testing.assert_allclose(np.take_along_axis(d, np.asarray(kidx), 1), srt[:, :3], rtol=1e-4, atol=1e-5)


def test_cosine_distance_is_two_minus_two_cos():
  z = jnp.array([[3.0, 0.0], [0.0, -2.0]])
  c = jnp.array([[1.0, 1.0], [-5.0, 0.0]])
  _, d = search.knn(z, c, 2, metric="cosine")
  # z0: cos 1/sqrt2 with c0, -1 with c1; z1: cos -1/sqrt2 with c0, 0 with c1.
  np.testing.assert_allclose(d, [[2 - np.sqrt(2), 4.0], [2.0, 2 + np.sqrt(2)]], rtol=1e-6)


def test_bf16_input_upcast():
  z, c = _random(20, 9, 4, seed=4)
  zb = jnp.asarray(z, jnp.bfloat16)
  idx_b, _ = search.nearest(zb, c)
  idx_f, _ = search.nearest(zb.astype(jnp.float32), c)
  np.testing.assert_array_equal(idx_b, idx_f)


def test_jit_vmap_and_sharded():
  z, c = _random(32, 11, 3, seed=5)
  ref = search.nearest(z, c, max_block_elements=40)
  out = jax.jit(lambda z, c: search.nearest(z, c, max_block_elements=40))(z, c)
  np.testing.assert_array_equal(out[0], ref[0])
  np.testing.assert_allclose(out[1], ref[1], rtol=1e-6)
  vm = jax.vmap(lambda z: search.nearest(z, c, max_block_elements=40))(z.reshape(4, 8, 3))
  np.testing.assert_array_equal(vm[0].reshape(-1), ref[0])
  mesh = sharding.make_mesh()
  zs = jax.device_put(z, sharding.batch_sharding(mesh, 2))
  out = jax.jit(lambda z, c: search.knn(z, c, 3, max_block_elements=40))(zs, c)
  ref = search.knn(z, c, 3, max_block_elements=40)
  np.testing.assert_array_equal(out[0], ref[0])
  np.testing.assert_allclose(out[1], ref[1], rtol=1e-6)


def test_sharded_rows_stay_sharded_without_all_gather():
  # 64 rows in row chunks (and code blocks): strided chunks keep the batch sharding inside each chunk,
  # so every device searches its own rows and z is never gathered.
  mesh = sharding.make_mesh()
  # (K, budget): 16 rows x all 24 codes per chunk; 8 rows x 8 codes per block (100 codes > budget).
  # Chunks need at least one row per device (R >= 8) for this to hold.
  for k, budget in ((24, 24 * 16), (100, 64)):
    z, c = _random(64, k, 3, seed=6)
    zs = jax.device_put(z, sharding.batch_sharding(mesh, 2))
    assert search.plan_blocks(64, k, budget)[0] >= 8
    fn = jax.jit(lambda z, c: search.nearest(z, c, max_block_elements=budget))
    assert "all-gather" not in fn.lower(zs, c).compile().as_text()
    idx, _ = fn(zs, c)
    assert idx.sharding.spec == sharding.batch_sharding(mesh, 1).spec
    np.testing.assert_array_equal(idx, _np_dist(z, c, "euclidean").argmin(1))


def test_plan_blocks_respects_budget():
  for n, k, budget in [(100, 10, 35), (7, 1000, 50), (1, 2**18, 2**10), (16384, 4096, 2**24)]:
    rows, codes = search.plan_blocks(n, k, budget)
    assert rows * codes <= budget or rows == codes == 1
    assert 1 <= rows <= n and 1 <= codes <= k


def test_validation_names_the_argument():
  z, c = jnp.zeros((4, 3)), jnp.zeros((5, 3))
  with pytest.raises(ValueError, match=r"z must have rank 2"):
    search.nearest(jnp.zeros((2, 4, 3)), c)
  with pytest.raises(ValueError, match=r"codebook must have rank 2"):
    search.nearest(z, jnp.zeros((1, 5, 3)))
  with pytest.raises(ValueError, match=r"same last dimension D.*\(4, 3\).*\(5, 2\)"):
    search.nearest(z, jnp.zeros((5, 2)))
  with pytest.raises(TypeError, match="z must have a floating dtype"):
    search.nearest(jnp.zeros((4, 3), jnp.int32), c)
  with pytest.raises(TypeError, match="codebook must have a floating dtype"):
    search.knn(z, jnp.zeros((5, 3), jnp.int32), 1)
  with pytest.raises(ValueError, match=r"metric must be one of .* got 'l1'"):
    search.nearest(z, c, metric="l1")
  with pytest.raises(ValueError, match=r"k must be in \[1, K=5\].*got 6"):
    search.knn(z, c, 6)
  with pytest.raises(ValueError, match="k must be >= 1, got 0"):
    search.knn(z, c, 0)
  with pytest.raises(ValueError, match="max_block_elements must be >= 1, got 0"):
    search.nearest(z, c, max_block_elements=0)


@pytest.mark.parametrize("width", [1, 4, 32])
def test_first_argmin_equals_argmin_with_ties(width):
  # Small integers: many exact ties inside and across groups; the lowest index must win as in argmin.
  rng = np.random.default_rng(7)
  s = rng.integers(0, 4, size=(64, 96)).astype(np.float32)
  s[5] = 2.0  # a whole row tied
  s[6, :] = 3.0
  s[6, 95] = 0.0  # minimum in the last position of the last group
  idx, best = search.first_argmin(jnp.asarray(s), width)
  np.testing.assert_array_equal(idx, s.argmin(1))
  np.testing.assert_array_equal(best, s.min(1))
  assert idx.dtype == jnp.int32


def test_group_width_and_block_codes():
  assert search.group_width(4096) == 32
  assert search.group_width(1000) == 25  # largest divisor <= 32
  assert search.group_width(4093) == 1   # prime
  assert search.group_width(7) == 7
  assert search.block_codes(4096, 4096) == 4096
  assert search.block_codes(5000, 2**18) == 4992  # blocked: multiple of 32
  assert search.block_codes(20, 100) == 20        # below one group: unchanged


@pytest.mark.parametrize("k,budget,plan", [
    (130, 2**24, (64, 130)),      # one block, groups of 26
    (130, 100, (10, 10)),         # blocks of 10 codes (the memory budget cuts the codebook)
    (10000, 2**24, (65, 8064)),   # CPU cache tiles: 2 blocks of 8064 codes, the last one padded
])
def test_ties_across_groups_and_blocks(k, budget, plan):
  # Integer points on a 5x5x5 grid: exact float32 distances and many exact ties (duplicate codes).
  rng = np.random.default_rng(8)
  z = rng.integers(-2, 3, size=(130 if k > 1000 else 64, 3)).astype(np.float32)
  c = rng.integers(-2, 3, size=(k, 3)).astype(np.float32)
  c[100] = c[4]
  c[64] = c[33]
  rows, codes = search.plan_search(z.shape[0], k, budget)
  assert (rows, search.block_codes(codes, k)) == plan
  d = _np_dist(z, c, "euclidean")
  idx, dist = search.nearest(z, c, max_block_elements=budget)
  np.testing.assert_array_equal(idx, d.argmin(1))
  np.testing.assert_array_equal(dist, d.min(1))
  assert not np.any(np.isin(np.asarray(idx), [100, 64]))
