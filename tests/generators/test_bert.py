"""Tests of the bidirectional MaskGIT transformer and its training mask."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.generators import bert


def _model(**kw):
  cfg = dict(codebook_size=10, seq_len=8, num_classes=2, width=32, depth=2, heads=4)
  cfg.update(kw)
  return bert.MaskGITTransformer(**cfg, rngs=nnx.Rngs(0))


def test_ids_and_shapes():
  m = _model()
  assert m.mask_id == 10 and m.null_id == 13
  np.testing.assert_array_equal(m.condition_ids(jnp.array([0, 1, -1]), 3), [11, 12, 13])
  logits = m(jnp.full((2, 8), m.mask_id), jnp.array([0, 1]))
  assert logits.shape == (2, 8, 10) and logits.dtype == jnp.float32


def test_bidirectional_every_position_sees_the_future():
  m = _model()
  a = jnp.zeros((1, 8), jnp.int32)
  b = a.at[0, 7].set(5)
  la, lb = m(a), m(b)
  assert not np.allclose(la[:, 0], lb[:, 0])


def test_random_mask_counts_follow_the_schedule():
  rng = jax.random.key(0)
  mask = bert.random_mask(rng, 64, 16)
  ru, _ = jax.random.split(rng)
  u = jax.random.uniform(ru, (64,))
  expected = np.maximum(1, np.round(16 * np.clip(np.arccos(np.asarray(u)) / (np.pi / 2), 1e-6, 1)))
  np.testing.assert_array_equal(mask.sum(1), expected)


def test_loss_hand_value_on_uniform_logits_and_grad():
  m = _model()
  graphdef, state = nnx.split(m)
  # Zero the output head: uniform logits, so the smoothed CE is exactly log K.
  state["net"]["head"]["kernel"].set_value(jnp.zeros_like(state["net"]["head"]["kernel"].get_value()))
  tokens = jax.random.randint(jax.random.key(1), (4, 8), 0, 10)

  def f(state):
    return bert.loss(nnx.merge(graphdef, state), tokens, None, rng=jax.random.key(2))[0]
  value, grads = jax.value_and_grad(f)(state)
  np.testing.assert_allclose(value, np.log(10), rtol=1e-5)
  assert np.abs(np.asarray(grads["net"]["head"]["kernel"].get_value())).sum() > 0


def test_bad_arguments():
  with pytest.raises(ValueError, match="seq_len=8 positions, got 7"):
    _model()(jnp.zeros((1, 7), jnp.int32))
  with pytest.raises(ValueError, match="needs rng"):
    _model()(jnp.zeros((1, 8), jnp.int32), jnp.array([0]), train=True)
