"""Tests of RobusTok latent perturbation and its annealing schedule."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxtok import sharding
from jaxtok.quantizers import perturb

K, D = 16, 4


def _setup(batch, tokens, seed=0):
  """Random codebook, z, and nearest-code indices/z_q computed in numpy (float64)."""
  rng = np.random.default_rng(seed)
  codebook = rng.standard_normal((K, D)).astype(np.float32)
  z = rng.standard_normal((batch, tokens, D)).astype(np.float32)
  dist = ((z[..., None, :].astype(np.float64) - codebook.astype(np.float64)) ** 2).sum(-1)
  order = np.argsort(dist, axis=-1, kind="stable")  # [B, T, K], nearest first
  indices = order[..., 0].astype(np.int32)
  return (jnp.asarray(z), jnp.asarray(codebook[indices]), jnp.asarray(indices), jnp.asarray(codebook),
          order)


def test_no_change_when_alpha_or_beta_is_zero_or_delta_is_one():
  z, z_q, idx, cb, _ = _setup(4, 6)
  for kwargs in (dict(alpha=0.0, beta=1.0, delta=5), dict(alpha=1.0, beta=0.0, delta=5),
                 dict(alpha=1.0, beta=1.0, delta=1)):
    codes, new_idx, info = perturb.perturb(z, z_q, idx, cb, jax.random.key(0), **kwargs)
    np.testing.assert_array_equal(codes, z_q)
    np.testing.assert_array_equal(new_idx, idx)
    assert not np.asarray(info["changed"]).any() and float(info["change_rate"]) == 0.0
  # delta = 1 still selects every token (alpha = 1): the nearest is the token's own code.
  assert np.asarray(info["selected"]).all()


def test_replacements_are_among_the_delta_nearest_and_only_first_images_change():
  batch, beta, delta = 8, 0.3, 5  # int(8 * 0.3) = 2 images perturbed
  z, z_q, idx, cb, order = _setup(batch, 10, seed=1)
  codes, new_idx, info = perturb.perturb(z, z_q, idx, cb, jax.random.key(1), alpha=1.0, beta=beta,
                                         delta=delta)
  new_idx, codes = np.asarray(new_idx), np.asarray(codes)
  nb = 2
  # Perturbed images: every token drew one of its 5 nearest codes (numpy brute force), value exact.
  in_top = (order[:nb, :, :delta] == new_idx[:nb, :, None]).any(-1)
  assert in_top.all()
  np.testing.assert_array_equal(codes[:nb], np.asarray(cb)[new_idx[:nb]])
  assert (new_idx[:nb] != np.asarray(idx)[:nb]).any()  # something did change
  # The other images are untouched.
  np.testing.assert_array_equal(new_idx[nb:], np.asarray(idx)[nb:])
  np.testing.assert_array_equal(codes[nb:], np.asarray(z_q)[nb:])
  assert not np.asarray(info["selected"])[nb:].any()
  np.testing.assert_array_equal(perturb.image_mask(batch, beta), [True, True] + [False] * 6)


def test_batch_fraction_follows_python_int_as_the_release():
  assert perturb.num_perturbed(10, 0.3) == 3
  assert perturb.num_perturbed(100, 0.29) == 28  # 100 * 0.29 = 28.999999999999996 in float64
  assert perturb.num_perturbed(7, 1.0) == 7 and perturb.num_perturbed(7, 0.0) == 0


def test_empirical_rates():
  # Selection ~ Bernoulli(alpha), neighbour rank ~ U{0..delta-1}: 40000 draws, 5 standard errors.
  n = 40000
  sel, choice = perturb.sample_choices(jax.random.key(3), (200, 200), alpha=0.3, delta=4)
  se = np.sqrt(0.3 * 0.7 / n)
  assert abs(float(jnp.mean(sel)) - 0.3) < 5 * se
  freq = np.bincount(np.asarray(choice).ravel(), minlength=4) / n
  assert freq.shape == (4,) and np.abs(freq - 0.25).max() < 5 * np.sqrt(0.25 * 0.75 / n)
  # End to end: a token changes with probability alpha (delta - 1) / delta = 0.6 * 3/4 = 0.45.
  z, z_q, idx, cb, _ = _setup(64, 32, seed=2)
  _, new_idx, info = perturb.perturb(z, z_q, idx, cb, jax.random.key(4), alpha=0.6, beta=1.0, delta=4)
  m = 64 * 32
  rate = float(info["change_rate"])
  assert abs(rate - 0.45) < 5 * np.sqrt(0.45 * 0.55 / m)
  np.testing.assert_allclose(rate, np.mean(np.asarray(new_idx) != np.asarray(idx)))
  assert abs(float(jnp.mean(info["selected"])) - 0.6) < 5 * np.sqrt(0.6 * 0.4 / m)


def test_straight_through_gradients():
  z, z_q, idx, cb, _ = _setup(4, 6, seed=3)
  w = jax.random.normal(jax.random.key(5), z.shape)

  def loss(z, z_q):
    codes, _, _ = perturb.perturb(z, z_q, idx, cb, jax.random.key(6), alpha=0.5, beta=0.5, delta=3)
    return jnp.sum(codes * w)

  gz, gq = jax.grad(loss, argnums=(0, 1))(z, z_q)
  _, _, info = perturb.perturb(z, z_q, idx, cb, jax.random.key(6), alpha=0.5, beta=0.5, delta=3)
  sel = np.asarray(info["selected"])[..., None]
  assert sel.any() and (~sel).any()
  np.testing.assert_array_equal(gz, np.where(sel, w, 0.0))  # selected tokens: identity to z
  np.testing.assert_array_equal(gq, np.where(sel, 0.0, w))  # the rest: through z_q


def test_traced_delta_with_max_delta_equals_static_delta():
  z, z_q, idx, cb, _ = _setup(4, 8, seed=4)
  key = jax.random.key(7)
  ref = perturb.perturb(z, z_q, idx, cb, key, alpha=0.8, beta=1.0, delta=3)
  f = jax.jit(lambda d: perturb.perturb(z, z_q, idx, cb, key, alpha=0.8, beta=1.0, delta=d,
                                        max_delta=8))
  out = f(jnp.int32(3))
  np.testing.assert_array_equal(out[0], ref[0])
  np.testing.assert_array_equal(out[1], ref[1])
  # A traced delta above max_delta is clipped to it: equals the static max.
  np.testing.assert_array_equal(
      f(jnp.int32(50))[1], perturb.perturb(z, z_q, idx, cb, key, alpha=0.8, beta=1.0, delta=8)[1])


def test_cosine_neighbours_and_normalised_codes():
  z, _, _, cb, _ = _setup(3, 8, seed=5)
  zn = np.asarray(z) / np.linalg.norm(np.asarray(z), axis=-1, keepdims=True)
  cn = np.asarray(cb) / np.linalg.norm(np.asarray(cb), axis=-1, keepdims=True)
  order = np.argsort(-(zn @ cn.T), axis=-1, kind="stable")
  idx = jnp.asarray(order[..., 0].astype(np.int32))
  z_q = jnp.asarray(cn[order[..., 0]])
  codes, new_idx, _ = perturb.perturb(z, z_q, idx, cb, jax.random.key(8), alpha=1.0, beta=1.0,
                                      delta=4, cosine=True)
  new_idx = np.asarray(new_idx)
  assert (order[..., :4] == new_idx[..., None]).any(-1).all()
  np.testing.assert_allclose(codes, cn[new_idx], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(codes), axis=-1), 1.0, rtol=1e-6)


def test_schedule_hand_values():
  kw = dict(alpha0=1.0, delta0=100, anneal_start=40, anneal_end=120)  # configs/RobustTok.yaml
  expected = {0: (1.0, 100), 40: (1.0, 100), 60: (0.875, 87), 80: (0.75, 75), 120: (0.5, 50),
              200: (0.5, 50)}
  for step, (alpha, delta) in expected.items():
    a, d = perturb.schedule(step, **kw)
    assert d.dtype == jnp.int32 and a.dtype == jnp.float32
    np.testing.assert_allclose(float(a), alpha, rtol=1e-6)
    assert int(d) == delta, (step, int(d))
  # Traced step under jit gives the same values.
  a, d = jax.jit(lambda s: perturb.schedule(s, **kw))(jnp.int32(60))
  assert int(d) == 87 and abs(float(a) - 0.875) < 1e-6
  # end_ratio 0.2: continuous linear fall to 0.2 at anneal_end (the release jumps 0.8 -> 0.2 there).
  a, d = perturb.schedule(80, alpha0=0.5, delta0=10, anneal_start=40, anneal_end=120, end_ratio=0.2)
  np.testing.assert_allclose(float(a), 0.5 * 0.6, rtol=1e-6)
  assert int(d) == 6
  assert int(perturb.schedule(120, alpha0=0.5, delta0=10, anneal_start=40, anneal_end=120,
                              end_ratio=0.2)[1]) == 2
  # float32 0.7 * 10 = 6.9999995 still floors to 7; delta never drops below 1.
  assert int(perturb.schedule(9, alpha0=1.0, delta0=10, anneal_start=0, anneal_end=1,
                              end_ratio=0.7)[1]) == 7
  a, d = perturb.schedule(9, alpha0=1.0, delta0=10, anneal_start=0, anneal_end=1, end_ratio=0.0)
  assert float(a) == 0.0 and int(d) == 1


def test_scheduled_step_runs_in_one_compiled_function():
  z, z_q, idx, cb, _ = _setup(4, 8, seed=6)

  @jax.jit
  def step(s, key):
    alpha, delta = perturb.schedule(s, alpha0=1.0, delta0=6, anneal_start=0, anneal_end=10)
    return perturb.perturb(z, z_q, idx, cb, key, alpha=alpha, beta=1.0, delta=delta, max_delta=6)

  out = step(jnp.int32(10), jax.random.key(9))  # ratio 0.5: alpha 0.5, delta 3
  ref = perturb.perturb(z, z_q, idx, cb, jax.random.key(9), alpha=0.5, beta=1.0, delta=3)
  np.testing.assert_array_equal(out[1], ref[1])


def test_sharded_equals_unsharded():
  mesh = sharding.make_mesh((("data", 8),))
  z, z_q, idx, cb, _ = _setup(8, 6, seed=7)
  put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))
  key = jax.random.key(10)
  kw = dict(alpha=0.7, beta=0.5, delta=4)
  ref = perturb.perturb(z, z_q, idx, cb, key, **kw)
  out = perturb.perturb(put(z), put(z_q), put(idx), cb, key, **kw)
  np.testing.assert_array_equal(out[0], ref[0])
  np.testing.assert_array_equal(out[1], ref[1])
  np.testing.assert_array_equal(out[2]["selected"], ref[2]["selected"])


def test_bad_arguments_name_the_argument():
  z, z_q, idx, cb, _ = _setup(2, 3)
  key = jax.random.key(0)
  ok = dict(alpha=0.5, beta=0.5, delta=2)
  with pytest.raises(ValueError, match=r"z_q must have the shape of z \(2, 3, 4\)"):
    perturb.perturb(z, z_q[:, :2], idx, cb, key, **ok)
  with pytest.raises(ValueError, match=r"indices must have shape \(2, 3\)"):
    perturb.perturb(z, z_q, idx[:, :2], cb, key, **ok)
  with pytest.raises(TypeError, match="indices must have an integer dtype"):
    perturb.perturb(z, z_q, idx.astype(jnp.float32), cb, key, **ok)
  with pytest.raises(ValueError, match=r"codebook must have shape \[K, 4\]"):
    perturb.perturb(z, z_q, idx, cb[:, :3], key, **ok)
  with pytest.raises(ValueError, match="delta must be <= K=16"):
    perturb.perturb(z, z_q, idx, cb, key, alpha=0.5, beta=0.5, delta=17)
  with pytest.raises(ValueError, match="delta must be >= 1, got 0"):
    perturb.perturb(z, z_q, idx, cb, key, alpha=0.5, beta=0.5, delta=0)
  with pytest.raises(ValueError, match="delta must be <= max_delta=4, got 5"):
    perturb.perturb(z, z_q, idx, cb, key, alpha=0.5, beta=0.5, delta=5, max_delta=4)
  with pytest.raises(ValueError, match="delta is traced"):
    jax.jit(lambda d: perturb.perturb(z, z_q, idx, cb, key, alpha=0.5, beta=0.5, delta=d))(2)
  with pytest.raises(ValueError, match="beta must be <= 1.0, got 1.5"):
    perturb.perturb(z, z_q, idx, cb, key, alpha=0.5, beta=1.5, delta=2)
  with pytest.raises(ValueError, match="alpha must be >= 0.0, got -0.1"):
    perturb.perturb(z, z_q, idx, cb, key, alpha=-0.1, beta=0.5, delta=2)
  with pytest.raises(ValueError, match="rng must be a PRNG key"):
    perturb.perturb(z, z_q, idx, cb, None, **ok)
  with pytest.raises(ValueError, match="anneal_end must be > anneal_start=40, got 40"):
    perturb.schedule(0, alpha0=1.0, delta0=10, anneal_start=40, anneal_end=40)
  with pytest.raises(ValueError, match="end_ratio must be <= 1.0, got 2.0"):
    perturb.schedule(0, alpha0=1.0, delta0=10, anneal_start=0, anneal_end=1, end_ratio=2.0)
  with pytest.raises(TypeError, match="delta0 must be an int"):
    perturb.schedule(0, alpha0=1.0, delta0=10.0, anneal_start=0, anneal_end=1)


# ----------------------------------------------------------------------------------------------------
# FSQ: nearby points of the level grid.

from jaxtok.quantizers import fsq  # noqa: E402  (the FSQ tests below only)

LV = (5, 3)
# Default-variant positions b = bound(z) (L=5: levels -2..2, L=3: -1..1) of two hand-worked tokens:
#   token 0, b = (0.3, -0.1): digits (2, 1), f = (0.3, -0.1); a step s along i adds 1 - 2 s f_i:
#     +1 on dim 0: 0.4, -1 on dim 1: 0.8, +1 on dim 1: 1.2, -1 on dim 0: 1.6
#     -> (2,1), (3,1), (2,0), (2,2), (1,1);
#   token 1, b = (-1.8, 0.9): digits (0, 2) (a corner), f = (0.2, -0.1):
#     +1 on dim 0: 0.6, -1 on dim 1: 0.8, the two off-grid steps last -> (0,2), (1,2), (0,1), ...
B_HAND = np.asarray([[0.3, -0.1], [-1.8, 0.9]])
ORDER_HAND = [[[2, 1], [3, 1], [2, 0], [2, 2], [1, 1]], [[0, 2], [1, 2], [0, 1]]]


def _z_of_bound(b, levels=LV):
  """z with fsq.bound(z) = b for odd levels (shift 0): atanh(b / half_l), half_l = (L-1)(1+eps)/2."""
  half = (np.asarray(levels, np.float64) - 1) * (1 + fsq.EPS) / 2
  return jnp.asarray(np.arctanh(b / half)[None], jnp.float32)


def test_fsq_neighbours_rank_grid_points_by_distance_hand_cases():
  z = _z_of_bound(B_HAND)
  q = fsq.quantize(z, LV)
  digits = fsq.indices_to_digits(q.indices, LV)
  np.testing.assert_array_equal(digits[0], [[2, 1], [0, 2]])
  cand = np.asarray(perturb.fsq_neighbours(z, digits, LV))[0]
  assert cand.shape == (2, 5, 2)
  np.testing.assert_array_equal(cand[0], ORDER_HAND[0])
  np.testing.assert_array_equal(cand[1, :3], ORDER_HAND[1])
  # The corner's off-grid steps (-1 on dim 0, +1 on dim 1) rank last.
  np.testing.assert_array_equal(cand[1, 3:], [[-1, 2], [0, 3]])


def test_fsq_neighbours_symmetric_tie_keeps_the_own_point_first():
  # symmetric L = 4, z = 0: position 3 (tanh 0 + 1) / 2 = 1.5 exactly, digit floor(1.5 + 0.5) = 2,
  # f = -1/2: the step -1 adds 1 + 2 f = 0 (a tie with the own point, kept second), +1 adds 2.
  z = jnp.zeros((1, 1, 1), jnp.float32)
  q = fsq.quantize(z, (4,), symmetric=True)
  digits = fsq.indices_to_digits(q.indices, (4,))
  cand = perturb.fsq_neighbours(z, digits, (4,), symmetric=True)
  np.testing.assert_array_equal(np.asarray(cand)[0, 0, :, 0], [2, 1, 3])


def test_perturb_fsq_exact_codes_indices_and_gradient():
  z = _z_of_bound(B_HAND)
  q = fsq.quantize(z, LV)
  rng = jax.random.key(5)
  codes, new_idx, info = perturb.perturb_fsq(z, q.codes, q.indices, LV, rng, alpha=1.0, beta=1.0,
                                             delta=2)
  # alpha = 1 selects both tokens; each takes rank `choice` in {0, 1} of its candidates.
  _, choice = perturb.sample_choices(rng, (1, 2), alpha=1.0, delta=2)
  choice = np.asarray(choice)[0]
  # Digits -> codes (d - L//2) / (L//2) and indices d0 + 5 d1 (first dimension least significant).
  table = {(2, 1): ((0.0, 0.0), 7), (3, 1): ((0.5, 0.0), 8), (0, 2): ((-1.0, 1.0), 10),
           (1, 2): ((-0.5, 1.0), 11)}
  for t in range(2):
    code, index = table[tuple(ORDER_HAND[t][choice[t]])]
    np.testing.assert_array_equal(np.asarray(codes)[0, t], code)
    assert int(new_idx[0, t]) == index
  np.testing.assert_array_equal(info["changed"][0], choice > 0)
  # The replaced code keeps FSQ's straight-through gradient to z.
  g_pert = jax.grad(lambda z: jnp.sum(perturb.perturb_fsq(
      z, fsq.quantize(z, LV).codes, q.indices, LV, rng, alpha=1.0, beta=1.0, delta=2)[0]))(z)
  g_plain = jax.grad(lambda z: jnp.sum(fsq.quantize(z, LV).codes))(z)
  np.testing.assert_array_equal(g_pert, g_plain)


def test_perturb_fsq_rates_images_and_limits():
  levels = (8, 5, 5, 5)
  z = jax.random.normal(jax.random.key(0), (64, 32, 4))
  q = fsq.quantize(z, levels)
  codes, new_idx, info = perturb.perturb_fsq(z, q.codes, q.indices, levels, jax.random.key(1),
                                             alpha=0.6, beta=0.5, delta=3)
  # Only the first 32 images; a selected token changes unless it draws rank 0: 0.6 * 2/3 = 0.4.
  np.testing.assert_array_equal(new_idx[32:], q.indices[32:])
  np.testing.assert_array_equal(codes[32:], q.codes[32:])
  rate = float(jnp.mean(info["changed"][:32]))
  m = 32 * 32
  assert abs(rate - 0.4) < 5 * np.sqrt(0.4 * 0.6 / m)
  # New codes are grid codes of the new indices, one level away along one axis.
  np.testing.assert_array_equal(codes, fsq.indices_to_codes(new_idx, levels))
  step = np.abs(np.asarray(fsq.indices_to_digits(new_idx, levels) - fsq.indices_to_digits(q.indices, levels)))
  assert step.sum(-1).max() == 1
  # delta up to D + 1 = 5 (own point + D neighbours always on the grid); traced delta with max_delta.
  with pytest.raises(ValueError, match="D \\+ 1 = 5"):
    perturb.perturb_fsq(z, q.codes, q.indices, levels, jax.random.key(1), alpha=1.0, beta=1.0, delta=6)
  a, _, _ = perturb.perturb_fsq(z, q.codes, q.indices, levels, jax.random.key(1), alpha=0.6, beta=0.5,
                                delta=jnp.int32(3), max_delta=5)
  np.testing.assert_array_equal(a, codes)
