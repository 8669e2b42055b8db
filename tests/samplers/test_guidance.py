import functools
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.samplers import guidance

# rbg keys: the samplers work with any key implementation, and threefry's unrolled rounds cost
# seconds of XLA compile per random call on a shared 2-core CPU.
KEY = functools.partial(jax.random.key, impl="rbg")

C = jax.random.normal(KEY(0), (3, 4, 2))
U = jax.random.normal(KEY(1), (3, 4, 2))


def test_neutral_scales_are_exact():
  np.testing.assert_array_equal(guidance.cfg_uncond_base(C, U, 1.0), C)
  np.testing.assert_array_equal(guidance.cfg_cond_base(C, U, 0.0), C)
  np.testing.assert_array_equal(guidance.cfg_instella(C, U, 0.0), C)
  np.testing.assert_allclose(guidance.cfg_uncond_base(C, U, 3.0), U + 3 * (C - U), rtol=1e-5, atol=1e-6)


def test_scale_schedules_hand_values():
  g = 5.0
  assert float(guidance.scale_at("constant", g, 0.3)) == 5.0
  assert float(guidance.scale_at("linear", g, 0.0)) == 1.0
  assert float(guidance.scale_at("linear", g, 0.25)) == 2.0  # 1 + 4/4
  pc = lambda r, p: float(guidance.scale_at("power-cosine", g, r, p))
  assert pc(0.0, 2.0) == pytest.approx(1.0) and pc(1.0, 2.0) == pytest.approx(5.0)
  assert pc(0.5, 1.0) == pytest.approx(3.0, abs=1e-6)  # (g-1)(1 - cos(pi/2))/2 + 1
  assert pc(0.5, 2.0) == pytest.approx(4 * (1 - np.cos(np.pi / 4)) / 2 + 1, abs=1e-6)
  assert pc(0.3, 0.0) == pytest.approx(5.0)  # RAR: power 0 is a constant g
  with pytest.raises(ValueError, match="cfg_schedule must be one of"):
    guidance.scale_at("cosine", g, 0.5)


def test_apg_reduces_to_cfg():
  out, avg = guidance.apg(C, U, 4.0, jnp.zeros_like(C), eta=1.0, norm_threshold=0.0, momentum=0.0)
  np.testing.assert_allclose(out, guidance.cfg_uncond_base(C, U, 4.0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(avg, C - U, rtol=1e-6)


def test_apg_parts_and_flextok_parity():
  # eta = 0: the update is orthogonal to cond, per sample.
  out, _ = guidance.apg(C, U, 3.0, jnp.zeros_like(C), eta=0.0, norm_threshold=0.0, momentum=0.0)
  dot = np.sum(np.asarray(out - C) * np.asarray(C), axis=(1, 2))
  np.testing.assert_allclose(dot, 0.0, atol=1e-4)
  # threshold: the guidance update's norm is at most (s - 1) r.
  out, _ = guidance.apg(C, U, 3.0, jnp.zeros_like(C), eta=1.0, norm_threshold=0.5, momentum=0.0)
  norms = np.sqrt(np.sum(np.asarray(out - C) ** 2, axis=(1, 2)))
  assert np.all(norms <= 2 * 0.5 + 1e-5)
  avg = jax.random.normal(KEY(2), C.shape)
  ours = guidance.apg(C, U, 7.5, avg)  # defaults = FlexTok release
  ref = guidance.apg(C, U, 7.5, avg, eta=0.0, norm_threshold=2.5, momentum=-0.5)
  np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ours[1], ref[1], rtol=1e-6)


def test_call_pair_runs_once_on_doubled_batch():
  calls = []

  def fn(x, c):
    calls.append(x.shape)
    return x * c["w"][:, None]

  cond, uncond = {"w": jnp.array([2.0, 3.0])}, {"w": jnp.array([0.0, -1.0])}
  c, u = guidance.call_pair(fn, (jnp.ones((2, 3)),), cond, uncond)
  assert calls == [(4, 3)]
  np.testing.assert_array_equal(c, [[2.0] * 3, [3.0] * 3])
  np.testing.assert_array_equal(u, [[0.0] * 3, [-1.0] * 3])
