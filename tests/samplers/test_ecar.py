"""E-CAR's multistage flow: stage bookkeeping by hand, resampling identities, the jump's noise
statistics, the training trajectory's closed form, one stage == plain flow, and exact sampling
with an oracle velocity."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.samplers import ecar, flow

KEY = functools.partial(jax.random.key, impl="rbg")


def test_sides_bounds_windows_by_hand():
  assert ecar.stage_sides(4, 3) == (1, 2, 4)
  assert ecar.stage_sides(16, 5) == (1, 2, 4, 8, 16)
  assert ecar.stage_sides(6, 2) == (3, 6) and ecar.stage_sides(5, 1) == (5,)
  with pytest.raises(ValueError, match=r"grid_side must be divisible by 2\^\(num_stages-1\)=4"):
    ecar.stage_sides(6, 3)
  np.testing.assert_allclose(ecar.uniform_bounds(3), [0, 1 / 3, 2 / 3, 1])
  # Three stages: ends = the boundaries 1/3, 2/3, 1; starts 0, (1/3)/(5/3) = 0.2, (2/3)/(4/3) = 0.5.
  starts, ends = ecar.windows(ecar.uniform_bounds(3))
  np.testing.assert_allclose(starts, [0.0, 0.2, 0.5])
  np.testing.assert_allclose(ends, [1 / 3, 2 / 3, 1.0])
  # The boundaries partition [0, 1]: [0] + ends == bounds; each start lies below the previous end.
  b = np.array([0.0, 0.25, 0.6, 1.0])
  starts, ends = ecar.windows(b)
  np.testing.assert_allclose(np.concatenate([[0.0], ends]), b)
  assert np.all(starts[1:] < ends[:-1]) and np.all(starts < ends)
  # One stage: the whole trajectory.
  np.testing.assert_allclose(ecar.windows([0.0, 1.0]), ([0.0], [1.0]))
  # Jump at b = 1/2: alpha = 2/3, beta = sqrt(3)/2 * 1/(3/2) = 1/sqrt(3); alpha * b = s = 1/3.
  alpha, beta = ecar.jump_coefficients(0.5)
  assert alpha == pytest.approx(2 / 3) and beta == pytest.approx(1 / math.sqrt(3))
  for bad in ([0.0, 0.5, 0.5, 1.0], [0.1, 1.0], [0.0, 0.9], [[0.0, 1.0]]):
    with pytest.raises(ValueError, match="bounds must increase strictly from 0 to 1"):
      ecar.windows(bad)
  with pytest.raises(ValueError, match=r"head_steps must be an int >= 1 or 3 ints"):
    ecar.stage_head_steps([2, 2], 3)
  assert ecar.model_calls(3, (4, 3, 2), "heun") == {"condition": 3, "head": 18}


def test_resampling_between_stages():
  x = jax.random.normal(KEY(0), (2, 3, 5, 4))
  up = ecar.upsample2(x)
  assert up.shape == (2, 6, 10, 4)
  np.testing.assert_array_equal(ecar.pool2(up), x)           # pool(upsample(x)) == x exactly
  np.testing.assert_array_equal(up[:, 1::2, ::2], x)         # nearest: each block repeats its value
  g = jnp.arange(16.0).reshape(1, 4, 4, 1)
  np.testing.assert_allclose(ecar.pool2(g)[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])
  np.testing.assert_allclose(ecar.pool_to(g, 1)[0, 0, 0, 0], 7.5)
  with pytest.raises(ValueError, match="pool2 needs even map sides, got 3 x 5"):
    ecar.pool2(x)
  # The jump's fresh noise has zero block means, so pooling the next stage's start gives alpha x.
  np.testing.assert_allclose(ecar.pool2(ecar.block_noise(KEY(1), (2, 6, 10, 4))), 0.0, atol=1e-6)
  alpha, _ = ecar.jump_coefficients(0.4)
  np.testing.assert_allclose(ecar.pool2(ecar.jump(x, 0.4, KEY(2))), alpha * x, atol=1e-5)


def test_jump_matches_the_start_distribution():
  """x_e = b D(x) + (1 - b) n at side 1 -> jump -> 2x2 map whose noise about s U(D x) has std
  1 - s per entry and no correlation inside the block (plain upsampling would give correlation 1)."""
  b, count = 0.5, 40000
  s = b / (2 - b)
  mean = 1.7
  n = jax.random.normal(KEY(3), (count, 1, 1, 1))
  start = ecar.jump(b * mean + (1 - b) * n, b, KEY(4))
  noise = np.asarray(start - s * mean).reshape(count, 4)
  np.testing.assert_allclose(noise.mean(0), 0.0, atol=0.03)
  np.testing.assert_allclose(noise.std(0), 1 - s, rtol=0.03)
  corr = np.corrcoef(noise.T)
  np.testing.assert_allclose(corr[~np.eye(4, dtype=bool)], 0.0, atol=0.03)


def test_trajectory_closed_form():
  """Stage k: end = e_k D_k(x) + (1 - e_k) n_k and start = s_k U(D_{k-1} x) + (1 - s_k) n_k with
  the same n_k; inputs = U(previous end); x_t / t / velocity on the straight line (hand values)."""
  x = jax.random.normal(KEY(5), (2, 4, 4, 3))
  bounds = ecar.uniform_bounds(3)
  states = jax.jit(lambda x, r: ecar.trajectory(x, bounds, r))(x, KEY(6))
  starts, ends = ecar.windows(bounds)
  assert [st.end.shape[1] for st in states] == [1, 2, 4]
  np.testing.assert_array_equal(states[0].inputs, 0.0)
  n0 = states[0].start                                         # stage 0 starts from pure noise
  np.testing.assert_allclose(states[0].end, ends[0] * ecar.pool_to(x, 1) + (1 - ends[0]) * n0,
                             atol=1e-6)
  for k in (1, 2):
    st, side = states[k], 2 ** k
    np.testing.assert_allclose(st.inputs, ecar.upsample2(states[k - 1].end), atol=1e-6)
    n_from_start = (st.start - starts[k] * ecar.upsample2(ecar.pool_to(x, side // 2))) / (1 - starts[k])
    if k < 2:
      n_from_end = (st.end - ends[k] * ecar.pool_to(x, side)) / (1 - ends[k])
      np.testing.assert_allclose(n_from_start, n_from_end, atol=1e-5)
  np.testing.assert_allclose(states[2].end, x, atol=1e-6)     # the last stage ends at the data
  # interpolate by hand: start 0, end 3, window [0.2, 0.6], tau 0.25 -> x 0.75, t 0.3, v 3/0.4.
  st = ecar.StageState(None, jnp.zeros((1, 1, 1, 1)), jnp.full((1, 1, 1, 1), 3.0))
  x_t, t, v = ecar.interpolate(st, 0.2, 0.6, jnp.full((1, 1, 1), 0.25))
  np.testing.assert_allclose([float(x_t.ravel()[0]), float(t.ravel()[0]), float(v.ravel()[0])],
                             [0.75, 0.3, 7.5], rtol=1e-6)
  # Stage 1 of two stages, hand-made: x = [[1, 2], [3, 4]], D_0 x = 2.5, e_0 = 1/2, s_1 = 1/3.
  x2 = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
  two = jax.jit(lambda x, r: ecar.trajectory(x, [0.0, 0.5, 1.0], r))(x2, KEY(7))
  np.testing.assert_allclose(two[0].end, 1.25 + 0.5 * two[0].start, atol=1e-6)
  np.testing.assert_allclose(ecar.pool2(two[1].start), (2 / 3) * two[0].end, atol=1e-6)
  np.testing.assert_array_equal(two[1].end, x2)


def _condition(inputs, labels):
  """z = [pooled map sum of all stage inputs, label] per token of the last stage (2 features)."""
  last = inputs[-1]
  b, r = last.shape[0], last.shape[1]
  total = sum(jnp.sum(m, axis=(1, 2, 3)) for m in inputs)
  feat = jnp.stack([total, jnp.asarray(labels, jnp.float32)], -1)
  return jnp.broadcast_to(feat[:, None], (b, r * r, 2))


def _head(x, t, z):
  return -x * (1.0 + t) + z[:, :1] * 0.1 + z[:, 1:] * t


def test_one_stage_is_plain_flow():
  labels = jnp.array([1.0, -2.0])
  run = jax.jit(lambda r: ecar.sample(r, _condition, _head, batch=2, grid_side=2, token_dim=3,
                                      num_stages=1, head_steps=5, cond=labels, temperature=0.8,
                                      head_method="heun"))
  got = run(KEY(8))
  x0 = 0.8 * jax.random.normal(jax.random.fold_in(KEY(8), 0), (2, 2, 2, 3))
  z = _condition((jnp.zeros((2, 2, 2, 3)),), labels).reshape(8, 2)
  want = flow.sample(_head, x0.reshape(8, 3), z, steps=5, method="heun")
  np.testing.assert_allclose(got.tokens.reshape(8, 3), want, rtol=1e-6, atol=1e-6)
  assert len(got.stage_maps) == 1


def test_oracle_velocity_reaches_the_data_through_every_stage():
  """For one data map x*, the exact conditional velocity of each window (recovered noise) makes
  Euler exact at any step count: every stage ends at e_k D_k(x*) + (1 - e_k) n_k with the noise
  n_k of its start, and the last at x*. The head learns which stage it is in from z."""
  target = jax.random.normal(KEY(9), (1, 4, 4, 2))
  bounds = ecar.uniform_bounds(3)
  starts, ends = ecar.windows(bounds)

  def condition(inputs, labels):
    del labels
    k = len(inputs) - 1
    r = 2 ** k
    d = ecar.pool_to(target, r)
    prev = ecar.upsample2(ecar.pool_to(target, r // 2)) if k else jnp.zeros_like(d)
    info = jnp.broadcast_to(jnp.array([starts[k], ends[k]], jnp.float32), (1, r, r, 2))
    z = jnp.concatenate([d, prev, info], -1)
    return jnp.broadcast_to(z, (inputs[0].shape[0], r, r, 6)).reshape(-1, r * r, 6)

  def head(x, t, z):
    d, prev, s, e = z[:, :2], z[:, 2:4], z[:, 4:5], z[:, 5:6]
    tau = (t - s) / (e - s)
    mean = (1 - tau) * s * prev + tau * e * d
    n = (x - mean) / (1 - s - tau * (e - s))
    return (e * d - s * prev - (e - s) * n) / (e - s)

  out = jax.jit(lambda r: ecar.sample(r, condition, head, batch=3, grid_side=4, token_dim=2,
                                      num_stages=3, head_steps=(3, 1, 2)))(KEY(10))
  np.testing.assert_allclose(out.tokens.reshape(3, 4, 4, 2), jnp.broadcast_to(target, (3, 4, 4, 2)),
                             atol=1e-4)
  # Stage 1's end: its noise part equals the noise part of its start (same n_1).
  alpha, _ = ecar.jump_coefficients(bounds[1])
  m1 = out.stage_maps[1]
  n_end = (m1 - ends[1] * ecar.pool_to(target, 2)) / (1 - ends[1])
  assert np.all(np.isfinite(n_end)) and float(jnp.std(n_end)) > 0.1
  np.testing.assert_allclose(ecar.pool2(ecar.pool2(ecar.upsample2(m1))), ecar.pool2(m1), atol=1e-6)


def test_guidance_at_scale_one_is_the_conditional_sample():
  labels = jnp.array([1.0, 3.0])
  kw = dict(batch=2, grid_side=4, token_dim=3, num_stages=2, head_steps=2, cond=labels)
  run = jax.jit(lambda r: (ecar.sample(r, _condition, _head, **kw),
                           ecar.sample(r, _condition, _head, uncond=jnp.zeros(2), cfg_scale=1.0, **kw),
                           ecar.sample(r, _condition, _head, uncond=jnp.zeros(2), cfg_scale=3.0, **kw)))
  plain, neutral, guided = run(KEY(11))
  # Scale 1 is the conditional velocity (the doubled batch may change the last float bit).
  np.testing.assert_allclose(plain.tokens, neutral.tokens, rtol=1e-6, atol=1e-6)
  assert not np.allclose(plain.tokens, guided.tokens)
