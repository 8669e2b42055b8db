"""Instella-T2I release fixes of the bit generators: logit-normal training times, the sampler's
protocol 2 and the AR sampler's within-token bit bias `delta`, against hand-derived values."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.configs import binary_diffusion as bd_config
from jaxtok.generators import binary_ar, binary_diffusion as bd
from jaxtok.samplers import binary_diffusion as sampler


def test_logit_normal_times_are_sigmoid_of_a_standard_normal():
  t = np.asarray(bd.sample_times(jax.random.key(0), 100_000, "logit_normal"))
  assert t.min() > 0 and t.max() < 1
  e = np.log(t / (1 - t))  # logit(t) must be N(0, 1)
  assert abs(e.mean()) < 0.02 and abs(e.std() - 1.0) < 0.02
  # Median of sigmoid(N(0, 1)) is 1/2; P(t < sigmoid(1)) = Phi(1) = 0.8413.
  assert abs(np.median(t) - 0.5) < 0.01
  assert abs((t < 1 / (1 + math.exp(-1))).mean() - 0.8413) < 0.01
  u = np.asarray(bd.sample_times(jax.random.key(0), 100_000, "uniform"))
  assert abs(u.mean() - 0.5) < 0.01 and abs((u < 0.25).mean() - 0.25) < 0.01
  with pytest.raises(ValueError, match="time_sampling"):
    bd.sample_times(jax.random.key(0), 2, "cosine")


def test_config_selects_the_release_times_and_the_model_uses_them():
  cfg = bd_config.get_config("tiny")
  assert cfg.model.time_sampling == "logit_normal"
  model = bd.make_model(cfg.model, rngs=nnx.Rngs(0))
  assert model.time_sampling == "logit_normal"
  with pytest.raises(ValueError, match="time_sampling"):
    bd.make_model({**cfg.model.to_dict(), "time_sampling": "beta"}, rngs=nnx.Rngs(0))


def test_protocol2_probability_by_hand():
  # p0 = 0.8, x = 1, t = 0.5, t_next = 0.25 (step 0.25):
  # a1 = (0.8 * 0.75 + 0.125) * (1 - 0.25 * 0.5) = 0.725 * 0.875 = 0.634375
  # a0 = (0.2 * 0.75 + 0.125) * (0 - 0.25 * (-0.5)) = 0.275 * 0.125 = 0.034375
  p = sampler.protocol2_prob(jnp.float32(0.8), jnp.int32(1), jnp.float32(0.5), jnp.float32(0.25))
  np.testing.assert_allclose(float(p), 0.634375 / (0.634375 + 0.034375), rtol=1e-6)
  # x = 0: a1 = 0.725 * 0.125, a0 = 0.275 * 0.875.
  p = sampler.protocol2_prob(jnp.float32(0.8), jnp.int32(0), jnp.float32(0.5), jnp.float32(0.25))
  np.testing.assert_allclose(float(p), 0.725 * 0.125 / (0.725 * 0.125 + 0.275 * 0.875), rtol=1e-6)
  # A step of 1 (t = 1 -> 0) makes the one-step kernel flat (1/2, 1/2): protocol 2 returns p0, the
  # marginal at t_next = 0, whatever x.
  p0 = jnp.asarray([0.1, 0.6, 0.9])
  for x in (0, 1):
    p = sampler.protocol2_prob(p0, jnp.full(3, x), jnp.float32(1.0), jnp.float32(0.0))
    np.testing.assert_allclose(np.asarray(p), np.asarray(p0), rtol=1e-6)


def test_protocol2_sampler_returns_the_target_of_an_exact_predictor():
  target = jnp.asarray(np.random.default_rng(3).integers(0, 2, (2, 3, 4)), jnp.int32)
  flips = lambda x, t, cond: jnp.where(x != target, 30.0, -30.0)
  out = jax.jit(lambda r: sampler.sample(r, flips, (2, 3, 4), steps=5, protocol=2))(
      jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(target))
  with pytest.raises(ValueError, match="protocol"):
    sampler.sample(jax.random.key(0), flips, (2, 3, 4), protocol=3)


def test_delta_bias_by_hand_greedy_and_sampled():
  # Greedy: logits [0.5, -0.2, 0.3, -1.0], delta 1: bit0 = 1; bit1: -0.2 - 1 -> 0; bit2: 0.3 + 1 -> 1;
  # bit3: -1.0 - 1 -> 0. Without delta: [1, 0, 1, 0] too, so also check a case the bias flips:
  logits = jnp.asarray([[0.5, 0.4, -0.6, 0.2]])
  np.testing.assert_array_equal(binary_ar.draw_bits(jax.random.key(0), logits, temperature=0),
                                [[1, 1, 0, 1]])
  # delta 1: bit1 0.4 - 1 < 0 -> 0; bit2 -0.6 + 1 > 0 -> 1; bit3 0.2 - 1 < 0 -> 0.
  np.testing.assert_array_equal(
      binary_ar.draw_bits(jax.random.key(0), logits, temperature=0, delta=1.0), [[1, 0, 1, 0]])
  # Sampled, logits 0: bit0 ~ 1/2, P(bit j = 1 | bit j-1 = 0) = sigmoid(delta) = 0.7311 (delta 1).
  bits = np.asarray(binary_ar.draw_bits(jax.random.key(1), jnp.zeros((40_000, 3)), delta=1.0))
  assert abs(bits[:, 0].mean() - 0.5) < 0.015
  s = 1 / (1 + math.exp(-1))
  assert abs(bits[bits[:, 0] == 0, 1].mean() - s) < 0.015
  assert abs(bits[bits[:, 0] == 1, 1].mean() - (1 - s)) < 0.015
  # delta = 0 keeps the earlier independent draw exactly.
  key, lg = jax.random.key(2), jax.random.normal(jax.random.key(3), (5, 6))
  np.testing.assert_array_equal(
      binary_ar.draw_bits(key, lg, temperature=0.7),
      jax.random.bernoulli(key, jax.nn.sigmoid(lg / 0.7)).astype(jnp.int32))


def test_ar_sampler_with_delta_runs_under_jit():
  model = binary_ar.BinaryAR(num_bits=3, seq_len=3, width=16, depth=1, heads=2, rngs=nnx.Rngs(0))
  out = jax.jit(lambda r: binary_ar.sample(r, model, jnp.full((2,), -1), delta=2.0))(
      jax.random.key(0))
  assert out.shape == (2, 3, 3) and set(np.unique(np.asarray(out))) <= {0, 1}
  with pytest.raises(TypeError, match="delta"):
    binary_ar.sample(jax.random.key(0), model, jnp.full((2,), -1), delta="1")


def test_sampling_config_reaches_the_release_options_through_the_generate_dispatch():
  """`config.sampling.protocol` / `bit_delta` (what `tools/sample.py --config.sampling.X=...`
  sets) reach the samplers: the dispatch's bits equal a direct call with the same options, and
  the options change the bits."""
  from jaxtok.configs import binary_ar as bar_config  # pylint: disable=g-import-not-at-top
  from jaxtok.eval import generate  # pylint: disable=g-import-not-at-top
  rng, labels = jax.random.key(3), jnp.full((4,), -1)
  dcfg = bd_config.get_config("tiny")
  assert dcfg.sampling.protocol == 1
  dmodel = bd.make_model(dcfg.model, rngs=nnx.Rngs(0))
  opts = generate.options_from_config(dict(dcfg.sampling, protocol=2))
  got = bd.generate(dmodel, rng, labels, opts)
  want = sampler.sample(rng, lambda x, t, c: dmodel(x, t, c), (4, dmodel.seq_len, dmodel.num_bits),
                        steps=opts.steps, cond=labels, protocol=2)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  one = bd.generate(dmodel, rng, labels, generate.options_from_config(dcfg.sampling))
  assert np.any(np.asarray(one) != np.asarray(got))
  acfg = bar_config.get_config("tiny")
  assert acfg.sampling.bit_delta == 0.0 and "protocol" not in acfg.sampling
  amodel = binary_ar.make_model(acfg.model, rngs=nnx.Rngs(0))
  opts = generate.options_from_config(dict(acfg.sampling, bit_delta=3.0))
  got = binary_ar.generate(amodel, rng, labels, opts)
  np.testing.assert_array_equal(np.asarray(got),
                                np.asarray(binary_ar.sample(rng, amodel, labels, delta=3.0)))
  plain = binary_ar.generate(amodel, rng, labels, generate.options_from_config(acfg.sampling))
  assert np.any(np.asarray(plain) != np.asarray(got))
  with pytest.raises(ValueError, match="protocol"):
    bd.generate(dmodel, rng, labels, generate.options_from_config(dict(dcfg.sampling, protocol=3)))
