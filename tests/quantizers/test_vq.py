"""Tests of the vector quantizer: search, losses, estimators, EMA, k-means, dead codes, entropy,
transformations (jit/vmap/grad) and sharding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok import sharding
from jaxtok.quantizers import vq


def _state(codebook):
  codebook = jnp.asarray(codebook, jnp.float32)
  k = codebook.shape[0]
  return vq.VQState(codebook=codebook, cluster_size=jnp.ones((k,), jnp.float32), embed_sum=codebook,
                    initialized=jnp.asarray(False))


def _np_dist(z, c, cosine=False):
  z = np.asarray(z, np.float64).reshape(-1, np.shape(c)[-1])
  c = np.asarray(c, np.float64)
  if cosine:
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
  return ((z[:, None, :] - c[None, :, :]) ** 2).sum(-1)


def _np_entropy_terms(z, c, temperature, cosine=False):
  d = _np_dist(z, c, cosine)
  logits = -d / temperature
  logits -= logits.max(1, keepdims=True)
  p = np.exp(logits)
  p /= p.sum(1, keepdims=True)
  per_sample = np.mean(-np.sum(p * np.log(np.maximum(p, 1e-300)), axis=1))
  avg = p.mean(0)
  return per_sample, -np.sum(avg * np.log(np.maximum(avg, 1e-8)))


# ---------------------------------------------------------------------------------------------- values


def test_hand_values_two_code_1d_codebook():
  state = _state([[-1.0], [2.0]])
  z = jnp.array([[[-3.0], [0.4]], [[0.6], [5.0]]])  # [2, 2, 1]
  out = vq.quantize(z, state, beta=0.25, codebook_weight=1.0)
  np.testing.assert_array_equal(out.indices, [[0, 0], [1, 1]])
  np.testing.assert_allclose(out.codes, [[[-1.0], [-1.0]], [[2.0], [2.0]]])
  # Squared errors 4, 1.96, 1.96, 9: mean 4.23.
  np.testing.assert_allclose(out.losses["commitment"], 0.25 * 4.23, rtol=1e-6)
  np.testing.assert_allclose(out.losses["codebook"], 4.23, rtol=1e-6)
  np.testing.assert_allclose(out.metrics["distortion"], 4.23, rtol=1e-6)
  np.testing.assert_allclose(out.metrics["usage"], 1.0)
  np.testing.assert_allclose(out.metrics["perplexity"], 2.0, rtol=1e-6)
  assert set(out.losses) == {"commitment", "codebook"}
  assert out.indices.dtype == jnp.int32 and out.codes.dtype == jnp.float32


def test_loss_gradients_by_hand():
  state = _state([[-1.0], [2.0]])
  z = jnp.array([[-3.0], [0.4], [0.6], [5.0]])

  def total(z, codebook, which):
    return vq.quantize(z, state._replace(codebook=codebook), beta=0.5).losses[which]

  gz = jax.grad(total)(z, state.codebook, "commitment")
  # d/dz beta * mean((z - q)^2) = 2 beta (z - q) / N, q = [-1, -1, 2, 2].
  np.testing.assert_allclose(gz[:, 0], 2 * 0.5 * np.array([-2.0, 1.4, -1.4, 3.0]) / 4, rtol=1e-6)
  np.testing.assert_array_equal(jax.grad(total, argnums=1)(z, state.codebook, "commitment"), 0.0)
  gc = jax.grad(total, argnums=1)(z, state.codebook, "codebook")
  # d/dc_k mean((z - q)^2) = 2 sum_{n -> k} (c_k - z_n) / N.
  np.testing.assert_allclose(gc[:, 0], [2 * (2.0 - 1.4) / 4, 2 * (1.4 - 3.0) / 4], rtol=1e-6)
  np.testing.assert_array_equal(jax.grad(total)(z, state.codebook, "codebook"), 0.0)


@pytest.mark.parametrize("cosine", [False, True])
def test_indices_match_numpy_brute_force(cosine):
  rng = np.random.default_rng(0)
  z = rng.normal(size=(3, 7, 4)).astype(np.float32)
  c = rng.normal(size=(13, 4)).astype(np.float32)
  d = _np_dist(z, c, cosine)
  for budget in (2**24, 5):  # dense, and row chunks x codebook blocks
    out = vq.quantize(jnp.asarray(z), _state(c), cosine=cosine, max_block_elements=budget)
    np.testing.assert_array_equal(out.indices.reshape(-1), d.argmin(1))
    np.testing.assert_allclose(out.metrics["distortion"], d.min(1).mean(), rtol=1e-5)
    expect = c / np.linalg.norm(c, axis=1, keepdims=True) if cosine else c
    np.testing.assert_allclose(out.codes.reshape(-1, 4), expect[d.argmin(1)], rtol=1e-6, atol=1e-6)


def test_ties_with_tiny_blocks_lowest_index():
  rng = np.random.default_rng(1)
  z = rng.integers(-2, 3, size=(40, 2)).astype(np.float32)
  c = rng.integers(-2, 3, size=(12, 2)).astype(np.float32)
  c[9] = c[2]
  d = _np_dist(z, c)
  for budget in (2**24, 5, 1):
    out = vq.quantize(jnp.asarray(z), _state(c), max_block_elements=budget)
    np.testing.assert_array_equal(out.indices, d.argmin(1))


def test_cosine_same_direction_ties_and_search_agreement():
  from jaxtok.quantizers import search
  rng = np.random.default_rng(6)
  c = rng.normal(size=(8, 3)).astype(np.float32)
  c[6] = 2.0 * c[2]  # same direction (exactly, after normalising): index 2 must win
  c[0] = 4.0 * c[5]  # same direction, lower index: index 0 must win over 5
  z = np.concatenate([c[[2, 5, 6]] * 0.5, rng.normal(size=(20, 3))]).astype(np.float32)
  for budget in (2**24, 4):
    out = vq.quantize(jnp.asarray(z), _state(c), cosine=True, max_block_elements=budget)
    idx, _ = search.nearest(jnp.asarray(z), jnp.asarray(c), metric="cosine", max_block_elements=budget)
    np.testing.assert_array_equal(out.indices, idx)
    np.testing.assert_array_equal(out.indices[:3], [2, 0, 2])
    assert not np.any(np.isin(np.asarray(out.indices), [5, 6]))


def test_codebook_of_2_pow_18():
  state = vq.init_state(jax.random.key(0), 2**18, 3)
  assert state.codebook.shape == (2**18, 3) and state.cluster_size.shape == (2**18,)
  z = jax.random.normal(jax.random.key(1), (6, 3))
  out = vq.quantize(z, state, max_block_elements=2**16)
  d = _np_dist(z, state.codebook)
  np.testing.assert_allclose(out.metrics["distortion"], d.min(1).mean(), rtol=1e-4, atol=1e-6)
  srt = np.sort(d, axis=1)
  clear = srt[:, 1] - srt[:, 0] > 1e-4
  np.testing.assert_array_equal(np.asarray(out.indices)[clear], d.argmin(1)[clear])


def test_bf16_gives_float32_indices_of_same_values():
  state = vq.init_state(jax.random.key(0), 64, 8)
  zb = jax.random.normal(jax.random.key(1), (4, 16, 8)).astype(jnp.bfloat16)
  out_b = vq.quantize(zb, state, max_block_elements=100)
  out_f = vq.quantize(zb.astype(jnp.float32), state, max_block_elements=100)
  np.testing.assert_array_equal(out_b.indices, out_f.indices)
  assert out_b.codes.dtype == jnp.bfloat16
  np.testing.assert_array_equal(out_b.codes, out_f.codes.astype(jnp.bfloat16))


def test_indices_to_codes_round_trip_and_clip():
  state = vq.init_state(jax.random.key(0), 8, 3)
  z = jax.random.normal(jax.random.key(1), (2, 5, 3))
  for cosine in (False, True):
    out = vq.quantize(z, state, cosine=cosine)
    np.testing.assert_allclose(vq.indices_to_codes(out.indices, state, cosine=cosine), out.codes,
                               rtol=1e-6, atol=1e-7)
  # Concrete ids outside [0, K) are refused; under jit they cannot be seen and clip (documented).
  with pytest.raises(ValueError, match=r"indices must be ids in \[0, 8\).*got -3 at index \(0,\)"):
    vq.indices_to_codes(jnp.array([-3, 8, 100]), state)
  jitted = jax.jit(lambda i: vq.indices_to_codes(i, state))
  np.testing.assert_array_equal(jitted(jnp.array([-3, 8, 100])), state.codebook[jnp.array([0, 7, 7])])


# --------------------------------------------------------------------------------------- estimators


def test_straight_through_gradient_is_identity():
  state = vq.init_state(jax.random.key(0), 16, 4)
  z = jax.random.normal(jax.random.key(1), (5, 4))
  w = jax.random.normal(jax.random.key(2), (5, 4))
  g = jax.grad(lambda z: jnp.sum(vq.quantize(z, state).codes * w))(z)
  np.testing.assert_allclose(g, w, rtol=1e-6)


def _np_rotation_jacobian(x, q):
  x = np.asarray(x, np.float64)
  q = np.asarray(q, np.float64)
  u = x / np.linalg.norm(x)
  qh = q / np.linalg.norm(q)
  w = (u + qh) / np.linalg.norm(u + qh)
  r = np.eye(len(x)) - 2 * np.outer(w, w) + 2 * np.outer(qh, u)
  return np.linalg.norm(q) / np.linalg.norm(x) * r, r, u, qh


def test_rotation_trick_value_and_jacobian():
  x = jnp.array([[1.0, 2.0, -0.5]])
  q = jnp.array([[-0.3, 1.5, 2.0]])
  np.testing.assert_allclose(vq.rotate_to(x, q), q, rtol=1e-6)
  jac = jax.jacobian(lambda x: vq.rotate_to(x, q)[0])(x)[:, 0, :]
  expect, r, u, qh = _np_rotation_jacobian(x[0], q[0])
  # The matrix is a rotation taking u to q̂ (independent check of the formula itself).
  np.testing.assert_allclose(r @ u, qh, atol=1e-12)
  np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)
  np.testing.assert_allclose(np.linalg.det(r), 1.0, rtol=1e-12)
  np.testing.assert_allclose(jac, expect, rtol=1e-5, atol=1e-6)
  # No gradient reaches q.
  np.testing.assert_array_equal(jax.grad(lambda q: jnp.sum(vq.rotate_to(x, q)))(q), 0.0)


def test_rotation_trick_through_quantize():
  state = vq.init_state(jax.random.key(3), 8, 3)
  z = jax.random.normal(jax.random.key(4), (4, 3))
  w = jax.random.normal(jax.random.key(5), (4, 3))
  out = vq.quantize(z, state, rotation_trick=True)
  np.testing.assert_allclose(out.codes, state.codebook[out.indices], rtol=1e-6, atol=1e-6)
  g = jax.grad(lambda z: jnp.sum(vq.quantize(z, state, rotation_trick=True).codes * w))(z)
  for n in range(4):
    jac, *_ = _np_rotation_jacobian(z[n], state.codebook[out.indices[n]])
    np.testing.assert_allclose(g[n], jac.T @ np.asarray(w[n], np.float64), rtol=1e-5, atol=1e-6)
  # x = 0 and antipodal x = -q still give exactly q in value.
  q = jnp.array([[1.0, 2.0], [0.5, -1.0]])
  np.testing.assert_allclose(vq.rotate_to(jnp.array([[0.0, 0.0], [-1.0, 2.0]]), q), q, rtol=1e-6)


# ------------------------------------------------------------------------------------------ entropy


@pytest.mark.parametrize("cosine", [False, True])
def test_entropy_matches_dense_numpy_and_bounds(cosine):
  rng = np.random.default_rng(2)
  z = rng.normal(size=(10, 3)).astype(np.float32)
  c = rng.normal(size=(7, 3)).astype(np.float32)
  t = 0.5
  per, avg = _np_entropy_terms(z, c, t, cosine)
  for budget in (2**24, 14, 3):  # dense; row chunks; row chunks x code blocks (two-pass online lse)
    out = vq.quantize(jnp.asarray(z), _state(c), cosine=cosine, entropy_weight=0.3,
                      entropy_temperature=t, entropy_gamma=2.0, max_block_elements=budget)
    np.testing.assert_allclose(out.metrics["per_sample_entropy"], per, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.metrics["codebook_entropy"], avg, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.losses["entropy"], 0.3 * (per - 2.0 * avg), rtol=1e-5, atol=1e-6)
    assert 0.0 <= float(out.metrics["per_sample_entropy"]) <= np.log(7) + 1e-6
    assert 0.0 <= float(out.metrics["codebook_entropy"]) <= np.log(7) + 1e-6


def test_entropy_gradient_blocked_equals_dense():
  state = vq.init_state(jax.random.key(0), 9, 3)
  z = jax.random.normal(jax.random.key(1), (11, 3))

  def loss(z, c, budget):
    return vq.quantize(z, state._replace(codebook=c), entropy_weight=1.0, entropy_temperature=0.05,
                       max_block_elements=budget).losses["entropy"]

  dense = jax.grad(loss, argnums=(0, 1))(z, state.codebook, 2**24)
  blocked = jax.grad(loss, argnums=(0, 1))(z, state.codebook, 4)
  assert np.all(np.isfinite(dense[0])) and np.any(np.asarray(dense[1]) != 0)
  for a, b in zip(dense, blocked):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_entropy_extremes():
  # One code per point, far apart, tiny T: per-sample entropy 0; balanced use: log K.
  c = jnp.array([[0.0], [10.0], [20.0], [30.0]])
  out = vq.quantize(c, _state(c), entropy_weight=1.0, entropy_temperature=0.01)
  np.testing.assert_allclose(out.metrics["per_sample_entropy"], 0.0, atol=1e-6)
  np.testing.assert_allclose(out.metrics["codebook_entropy"], np.log(4), rtol=1e-6)


# ------------------------------------------------------------------------------------ state updates


def test_ema_update_closed_form_and_laplace_sum():
  rng = np.random.default_rng(3)
  k, d = 5, 2
  z = rng.normal(size=(12, d)).astype(np.float32)
  idx = np.array([0, 0, 1, 3, 3, 3, 0, 1, 1, 3, 0, 3], np.int32)  # code 2 and 4 unused
  state = vq.VQState(codebook=jnp.asarray(rng.normal(size=(k, d)), jnp.float32),
                     cluster_size=jnp.asarray([2.0, 0.5, 1.0, 3.0, 0.0], jnp.float32),
                     embed_sum=jnp.asarray(rng.normal(size=(k, d)), jnp.float32),
                     initialized=jnp.asarray(True))
  new = vq.ema_update(state, jnp.asarray(z), jnp.asarray(idx), decay=0.9, eps=1e-3)
  counts = np.bincount(idx, minlength=k).astype(np.float64)
  sums = np.zeros((k, d))
  np.add.at(sums, idx, z)
  n = 0.9 * np.asarray(state.cluster_size, np.float64) + 0.1 * counts
  s = 0.9 * np.asarray(state.embed_sum, np.float64) + 0.1 * sums
  smoothed = (n + 1e-3) / (n.sum() + k * 1e-3) * n.sum()
  np.testing.assert_allclose(new.cluster_size, n, rtol=1e-6)
  np.testing.assert_allclose(new.embed_sum, s, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new.codebook, s / smoothed[:, None], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(vq.laplace_smooth(new.cluster_size, 1e-3).sum(), n.sum(), rtol=1e-6)
  assert bool(new.initialized)
  # Out-of-range indices (-1 marks dropped residual levels) contribute nothing.
  extra = vq.ema_update(state, jnp.asarray(np.concatenate([z, z[:2] + 50.0])),
                        jnp.asarray(np.concatenate([idx, [-1, k]]).astype(np.int32)), decay=0.9, eps=1e-3)
  for a, b in zip(extra, new):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  # A step that leaves the codebook where the data already is: codes at the cluster means, decay 0.
  fresh = vq.ema_update(state, jnp.asarray(z), jnp.asarray(idx), decay=0.0, eps=1e-12)
  used = counts > 0
  np.testing.assert_allclose(np.asarray(fresh.codebook)[used], (sums / np.maximum(counts, 1)[:, None])[used],
                             rtol=1e-5)


def test_lloyd_matches_numpy_lloyd():
  rng = np.random.default_rng(4)
  x = np.concatenate([rng.normal(size=(15, 2)) + off for off in ([0, 0], [6, 0], [0, 6])]).astype(np.float32)
  init = x[[0, 1, 2, 20]]  # three starts in cluster 0, one in cluster 1: Lloyd has to move them
  means = init.astype(np.float64)
  for _ in range(4):
    a = _np_dist(x, means).argmin(1)
    counts = np.bincount(a, minlength=4)
    for j in range(4):
      if counts[j]:
        means[j] = x[a == j].mean(0)
  got, got_counts = vq.lloyd(jnp.asarray(x), jnp.asarray(init), iters=4)
  np.testing.assert_allclose(got, means, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(got_counts, counts)


def test_kmeans_init_reduces_distortion_and_sets_state():
  rng = np.random.default_rng(5)
  x = np.concatenate([rng.normal(size=(20, 3)) * 0.3 + rng.normal(size=3) * 4 for _ in range(4)])
  z = jnp.asarray(x.reshape(4, 20, 3), jnp.float32)
  state = vq.init_state(jax.random.key(0), 4, 3)
  key = jax.random.key(7)
  new = vq.kmeans_init(state, z, key, iters=10)
  start = vq.sample_vectors(key, z.reshape(-1, 3), 4)
  # The initial centres are rows of z, distinct when N >= K.
  assert all(np.any(np.all(np.asarray(z.reshape(-1, 3)) == np.asarray(r), axis=1)) for r in start)
  assert len({tuple(np.asarray(r)) for r in start}) == 4
  means, counts = vq.lloyd(z.reshape(-1, 3), start, iters=10)
  np.testing.assert_array_equal(new.codebook, means)
  np.testing.assert_array_equal(new.cluster_size, counts)
  np.testing.assert_allclose(new.embed_sum, means * counts[:, None], rtol=1e-6)
  assert bool(new.initialized) and float(counts.sum()) == 80.0
  before = _np_dist(z, start).min(1).mean()
  after = _np_dist(z, new.codebook).min(1).mean()
  assert after < before
  # With fewer vectors than codes the sample is drawn with replacement (shapes stay static).
  small = vq.kmeans_init(vq.init_state(jax.random.key(0), 8, 3), z[0, :3], key, iters=2)
  assert small.codebook.shape == (8, 3) and float(small.cluster_size.sum()) == 3.0


def test_maybe_kmeans_init_runs_once_under_jit():
  state = vq.init_state(jax.random.key(0), 4, 2)
  z = jax.random.normal(jax.random.key(1), (30, 2))
  step = jax.jit(vq.maybe_kmeans_init)
  once = step(state, z, jax.random.key(2))
  np.testing.assert_array_equal(once.codebook, vq.kmeans_init(state, z, jax.random.key(2)).codebook)
  twice = step(once, z * 5.0, jax.random.key(3))
  np.testing.assert_array_equal(twice.codebook, once.codebook)


def test_restart_dead_codes_replaces_exactly_the_dead():
  k, d = 6, 2
  state = vq.VQState(codebook=jnp.arange(12.0).reshape(k, d) + 100.0,
                     cluster_size=jnp.array([0.5, 3.0, 0.0, 1.0, 0.99, 2.0]),
                     embed_sum=jnp.ones((k, d)), initialized=jnp.asarray(True))
  z = jax.random.normal(jax.random.key(0), (2, 5, d))
  new = vq.restart_dead_codes(state, z, jax.random.key(1), threshold=1.0)
  dead = np.array([True, False, True, False, True, False])
  rows = np.asarray(z).reshape(-1, d)
  np.testing.assert_array_equal(np.asarray(new.codebook)[~dead], np.asarray(state.codebook)[~dead])
  np.testing.assert_array_equal(np.asarray(new.embed_sum)[~dead], 1.0)
  np.testing.assert_array_equal(np.asarray(new.cluster_size), [1.0, 3.0, 1.0, 1.0, 1.0, 2.0])
  for j in np.flatnonzero(dead):
    assert np.any(np.all(rows == np.asarray(new.codebook[j]), axis=1))
    np.testing.assert_array_equal(new.embed_sum[j], new.codebook[j] * 1.0)
  assert len({tuple(np.asarray(new.codebook[j])) for j in np.flatnonzero(dead)}) == 3


# ------------------------------------------------------------------------------- transformations


def test_jit_vmap_grad():
  state = vq.init_state(jax.random.key(0), 10, 3)
  z = jax.random.normal(jax.random.key(1), (4, 6, 3))
  kw = dict(entropy_weight=0.1, rotation_trick=True, max_block_elements=8)
  ref = vq.quantize(z, state, **kw)
  out = jax.jit(lambda z, s: vq.quantize(z, s, **kw))(z, state)
  np.testing.assert_array_equal(out.indices, ref.indices)
  np.testing.assert_allclose(out.losses["entropy"], ref.losses["entropy"], rtol=1e-5)
  vm = jax.vmap(lambda z: vq.quantize(z, state, **kw), in_axes=0)(z)
  np.testing.assert_array_equal(vm.indices, ref.indices)
  np.testing.assert_allclose(vm.codes, ref.codes, rtol=1e-6)
  assert vm.metrics["usage"].shape == (4,)

  def loss(z, codebook):
    out = vq.quantize(z, state._replace(codebook=codebook), **kw)
    return sum(out.losses.values()) + jnp.sum(out.codes ** 2)

  gz, gc = jax.jit(jax.grad(loss, argnums=(0, 1)))(z, state.codebook)
  assert np.all(np.isfinite(gz)) and np.all(np.isfinite(gc)) and np.any(np.asarray(gc) != 0)


def test_sharded_equals_unsharded():
  mesh = sharding.make_mesh()
  state = vq.init_state(jax.random.key(0), 12, 4)
  z = jax.random.normal(jax.random.key(1), (64, 4))
  zs = jax.device_put(z, sharding.batch_sharding(mesh, 2))
  kw = dict(entropy_weight=0.1, max_block_elements=64)
  q = jax.jit(lambda z, s: vq.quantize(z, s, **kw))
  a, b = q(z, state), q(zs, state)
  np.testing.assert_array_equal(a.indices, b.indices)
  np.testing.assert_allclose(a.codes, b.codes, rtol=1e-6)
  for key in a.losses:
    np.testing.assert_allclose(a.losses[key], b.losses[key], rtol=1e-5)
  ema = jax.jit(vq.ema_update)
  ea, eb = ema(state, z, a.indices), ema(state, zs, jax.device_put(a.indices, sharding.batch_sharding(mesh, 1)))
  for x, y in zip(ea, eb):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  km = jax.jit(vq.kmeans_init)
  ka, kb = km(state, z, jax.random.key(3)), km(state, zs, jax.random.key(3))
  for x, y in zip(ka, kb):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------- validation


def test_validation_names_the_argument():
  state = vq.init_state(jax.random.key(0), 4, 3)
  z = jnp.zeros((5, 3))
  with pytest.raises(ValueError, match="codebook_size must be >= 2, got 1"):
    vq.init_state(jax.random.key(0), 1, 3)
  with pytest.raises(ValueError, match="dim must be >= 1, got 0"):
    vq.init_state(jax.random.key(0), 4, 0)
  with pytest.raises(TypeError, match="codebook_size must be an int"):
    vq.init_state(jax.random.key(0), 4.0, 3)
  with pytest.raises(ValueError, match=r"z must have last dimension 3, got shape \(5, 2\)"):
    vq.quantize(jnp.zeros((5, 2)), state)
  with pytest.raises(TypeError, match="z must have a floating dtype"):
    vq.quantize(jnp.zeros((5, 3), jnp.int32), state)
  with pytest.raises(ValueError, match=r"state.codebook must hold K >= 2"):
    vq.quantize(z, state._replace(codebook=jnp.zeros((1, 3))))
  with pytest.raises(ValueError, match="beta must be >= 0.0, got -1"):
    vq.quantize(z, state, beta=-1)
  with pytest.raises(ValueError, match="entropy_temperature must be > 0.0, got 0"):
    vq.quantize(z, state, entropy_weight=1.0, entropy_temperature=0)
  with pytest.raises(TypeError, match="indices must have an integer dtype"):
    vq.indices_to_codes(jnp.zeros((2,)), state)
  with pytest.raises(ValueError, match=r"indices must have shape \(5,\).*got \(4,\)"):
    vq.ema_update(state, z, jnp.zeros((4,), jnp.int32))
  with pytest.raises(ValueError, match="decay must be <= 1.0, got 1.5"):
    vq.ema_update(state, z, jnp.zeros((5,), jnp.int32), decay=1.5)
  with pytest.raises(ValueError, match=r"state.cluster_size must have shape \(4,\)"):
    vq.ema_update(state._replace(cluster_size=jnp.ones(3)), z, jnp.zeros((5,), jnp.int32))
  with pytest.raises(ValueError, match="iters must be >= 1, got 0"):
    vq.kmeans_init(state, z, jax.random.key(0), iters=0)
  with pytest.raises(ValueError, match="threshold must be > 0.0, got 0"):
    vq.restart_dead_codes(state, z, jax.random.key(0), threshold=0)
  with pytest.raises(TypeError, match="state must be a VQState"):
    vq.quantize(z, {"codebook": 1})
