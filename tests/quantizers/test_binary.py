"""Tests of the Instella-T2I binary Bernoulli quantizer."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxtok import sharding
from jaxtok.quantizers import binary

quantize = jax.jit(binary.quantize, static_argnames=("train",))


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def test_eval_thresholds_sigmoid_deterministically():
  z = jnp.array([[2.0, -0.5, 0.0, 1e-3, -1e-3, 1e-9]])
  out = binary.quantize(z)
  # sigmoid(0) = 0.5 is not > 0.5; sigmoid(1e-9) rounds to exactly 0.5 in float32 -> 0 (release rule).
  np.testing.assert_array_equal(out.codes, [[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]])
  np.testing.assert_array_equal(out.indices, [0b100100])
  again = binary.quantize(z, rng=jax.random.key(0))  # eval ignores rng
  np.testing.assert_array_equal(again.codes, out.codes)


def test_aux_loss_hand_value():
  z = jnp.array([0.0, math.log(3.0)])  # sigma = 1/2, 3/4 -> sigma(1 - sigma) = 1/4, 3/16
  out = binary.quantize(z, aux_weight=2.0)
  np.testing.assert_allclose(out.losses["binary_aux"], 2.0 * (0.25 + 0.1875) / 2, rtol=1e-6)


def test_train_bits_follow_tempered_bernoulli():
  t = 0.1
  logits = np.array([-0.3, -0.1, 0.0, 0.05, 0.2], np.float32)
  m = 20000
  z = jnp.broadcast_to(jnp.asarray(logits), (m, 5))
  out = quantize(z, rng=jax.random.key(7), train=True, temperature=t)
  assert set(np.unique(np.asarray(out.codes))) <= {0.0, 1.0}
  freq = np.asarray(out.codes).mean(0)
  p = _sigmoid(logits / t)  # [0.047, 0.269, 0.5, 0.622, 0.881]
  # Binomial standard error sqrt(p(1-p)/m) <= 0.0036; 5 standard errors (a fixed seed makes the test
  # deterministic; a wrong temperature, e.g. sigmoid(z), is off by >= 0.07 on four of the five bits).
  np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / m))
  assert np.abs(freq - _sigmoid(logits)).max() > 0.2
  # Another key draws other bits; the same key the same bits.
  other = quantize(z, rng=jax.random.key(8), train=True, temperature=t)
  assert not np.array_equal(other.codes, out.codes)
  np.testing.assert_array_equal(quantize(z, rng=jax.random.key(7), train=True, temperature=t).codes,
                                out.codes)


@pytest.mark.parametrize("train", [False, True])
def test_straight_through_gradient_is_sigmoid_derivative(train):
  z = jnp.array([[-2.0, -0.3, 0.0, 0.7, 3.0]])
  w = jnp.array([[1.0, -2.0, 0.5, 3.0, -1.0]])
  rng = jax.random.key(1)
  grad = jax.grad(lambda x: jnp.sum(binary.quantize(x, rng=rng, train=train).codes * w))(z)
  s = _sigmoid(z)
  np.testing.assert_allclose(grad, np.asarray(w) * s * (1 - s), rtol=1e-6)
  # And through the embedding: d/dz sum((codes @ E) * v) = sigma' * (E v).
  e = jax.random.normal(jax.random.key(2), (5, 3))
  v = jnp.array([[1.0, 2.0, -1.0]])
  grad = jax.grad(lambda x: jnp.sum(
      binary.embed_bits(binary.quantize(x, rng=rng, train=train).codes, e) * v))(z)
  np.testing.assert_allclose(grad, s * (1 - s) * (np.asarray(e) @ np.asarray(v)[0])[None], rtol=1e-5)


def test_pack_msb_first_by_hand_and_round_trip():
  bits = jnp.array([[1, 0, 1, 1], [0, 0, 0, 1], [1, 0, 0, 0], [1, 1, 1, 1]])
  np.testing.assert_array_equal(binary.pack_bits(bits), [11, 1, 8, 15])
  np.testing.assert_array_equal(binary.unpack_bits(jnp.array([11, 1, 8, 15]), 4), bits)
  ones = jnp.ones((1, 31))
  assert int(binary.pack_bits(ones)[0]) == 2**31 - 1
  out = binary.quantize(jnp.where(bits == 1, 1.0, -1.0))
  np.testing.assert_array_equal(out.indices, [11, 1, 8, 15])
  np.testing.assert_array_equal(binary.indices_to_codes(out.indices, 4), out.codes)
  # 31 bits: the largest packed width; random codes survive the round trip.
  z = jax.random.normal(jax.random.key(3), (6, 31))
  out = binary.quantize(z)
  assert out.indices.shape == (6,) and out.indices.dtype == jnp.int32
  assert int(out.indices.min()) >= 0
  np.testing.assert_array_equal(binary.indices_to_codes(out.indices, 31), out.codes)
  ref = (np.asarray(z) > 0).astype(np.int64) @ (2 ** np.arange(30, -1, -1, dtype=np.int64))
  np.testing.assert_array_equal(out.indices, ref)


def test_wide_codes_keep_bits_as_indices():
  z = jax.random.normal(jax.random.key(4), (2, 3, 64))  # the release's 64 bits per token
  out = binary.quantize(z)
  assert out.indices.shape == (2, 3, 64) and out.indices.dtype == jnp.int32
  np.testing.assert_array_equal(out.indices, np.asarray(z) > 0)
  np.testing.assert_array_equal(binary.indices_to_codes(out.indices, 64), out.codes)


def test_metrics_per_bit_by_hand():
  # Bit 0 always 1 (usage 1/2, perplexity 1); bit 1 half ones (usage 1, perplexity 2).
  z = jnp.array([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0], [1.0, -1.0]])
  m = binary.quantize(z).metrics
  np.testing.assert_allclose(m["usage"], 0.75)
  np.testing.assert_allclose(m["perplexity"], 1.5, rtol=1e-6)
  np.testing.assert_allclose(m["joint_perplexity_bound"], 2.0, rtol=1e-6)


def test_embed_bits_sums_on_embeddings():
  e = jnp.array([[1.0, 2.0], [10.0, 20.0], [100.0, 200.0]])
  np.testing.assert_array_equal(binary.embed_bits(jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), e),
                                [[101.0, 202.0], [10.0, 20.0]])


def test_jit_vmap_bf16():
  z = jax.random.normal(jax.random.key(5), (4, 3, 12))
  eager = binary.quantize(z)
  jitted = quantize(z)
  np.testing.assert_array_equal(jitted.indices, eager.indices)
  mapped = jax.vmap(lambda x: binary.quantize(x).indices)(z)
  np.testing.assert_array_equal(mapped, eager.indices)
  outb = binary.quantize(z.astype(jnp.bfloat16), rng=jax.random.key(0), train=True)
  assert outb.codes.dtype == jnp.bfloat16 and outb.losses["binary_aux"].dtype == jnp.float32
  # Traced temperature and weight (schedules) work under jit.
  f = jax.jit(lambda x, t: binary.quantize(x, rng=jax.random.key(0), train=True, temperature=t).codes)
  np.testing.assert_array_equal(f(z, 0.1), quantize(z, rng=jax.random.key(0), train=True).codes)


def test_sharded_equals_unsharded():
  mesh = sharding.make_mesh((("data", 8),))
  z = jax.random.normal(jax.random.key(6), (8, 4, 12))
  zs = jax.device_put(z, NamedSharding(mesh, P("data")))
  for train in (False, True):
    ref = quantize(z, rng=jax.random.key(9), train=train)
    out = quantize(zs, rng=jax.random.key(9), train=train)
    np.testing.assert_array_equal(out.indices, ref.indices)
    np.testing.assert_array_equal(out.codes, ref.codes)
    for k in ref.metrics:
      np.testing.assert_allclose(out.metrics[k], ref.metrics[k], rtol=1e-6)
    np.testing.assert_allclose(out.losses["binary_aux"], ref.losses["binary_aux"], rtol=1e-6)


def test_bad_arguments_name_the_argument():
  z = jnp.zeros((2, 4))
  with pytest.raises(ValueError, match="rng must be a PRNG key when train=True"):
    binary.quantize(z, train=True)
  with pytest.raises(ValueError, match="temperature must be > 0.0 and finite, got 0.0"):
    binary.quantize(z, temperature=0.0)
  with pytest.raises(ValueError, match="aux_weight must be >= 0.0 and finite, got -1.0"):
    binary.quantize(z, aux_weight=-1.0)
  with pytest.raises(TypeError, match="train must be a Python bool"):
    binary.quantize(z, train=1)
  with pytest.raises(TypeError, match="z must have a floating dtype"):
    binary.quantize(jnp.zeros((2, 4), jnp.int32))
  with pytest.raises(ValueError, match=r"indices must have shape \[..., 40\]"):
    binary.indices_to_codes(jnp.zeros((2, 39), jnp.int32), 40)
  with pytest.raises(TypeError, match="indices must have an integer dtype"):
    binary.indices_to_codes(jnp.zeros((2,)), 4)
  with pytest.raises(ValueError, match=r"embedding must have shape \[4, D\]"):
    binary.embed_bits(z, jnp.zeros((3, 8)))
  with pytest.raises(ValueError, match="at most 31 entries"):
    binary.pack_bits(jnp.zeros((2, 32)))
