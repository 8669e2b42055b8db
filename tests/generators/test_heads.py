"""Tests of the per-token flow head and TokenBridge's channel-autoregressive head."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.generators import heads


def test_timestep_embedding_hand_values():
  e = heads.timestep_embedding(jnp.array([0.0, 0.5]), 4)
  # t=0: cos(0)=1, sin(0)=0; t=0.5 -> args 500 * [1, 1e-2].
  np.testing.assert_allclose(e[0], [1, 1, 0, 0], atol=1e-6)
  np.testing.assert_allclose(e[1], [np.cos(500), np.cos(5), np.sin(500), np.sin(5)], atol=1e-4)


def test_flow_head_starts_at_zero_velocity_and_learns():
  head = heads.FlowHead(token_dim=3, cond_dim=5, width=32, depth=2, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (8, 3))
  z = jax.random.normal(jax.random.key(1), (8, 5))
  np.testing.assert_array_equal(head(x, jnp.full((8,), 0.5), z), 0.0)  # zero-initialised output
  # With v = 0 the loss is E|eps - x|^2 = |x|^2 mean + 1 per dim.
  loss0 = heads.flow_loss(head, x, z, jax.random.key(2), batch_mul=64)
  assert abs(float(loss0) - (float(jnp.mean(x**2)) + 1.0)) < 0.2
  graphdef, state = nnx.split(head)

  def f(state):
    return heads.flow_loss(nnx.merge(graphdef, state), x, z, jax.random.key(3))
  grads = jax.grad(f)(state)
  assert float(jnp.abs(grads["out"]["kernel"].get_value()).sum()) > 0
  with pytest.raises(ValueError, match="time_sampling must be"):
    heads.flow_loss(head, x, z, jax.random.key(2), time_sampling="cosine")


def test_dimwise_head_is_causal_over_channel_order():
  head = heads.DimwiseARHead(num_channels=4, levels=5, cond_dim=6, width=32, depth=2, heads=4,
                             order=(2, 0, 3, 1), rngs=nnx.Rngs(0))
  z = jax.random.normal(jax.random.key(0), (3, 6))
  t = jax.random.randint(jax.random.key(1), (3, 4), 0, 5)
  logits = head(z, t)
  assert logits.shape == (3, 4, 5)
  # Changing the token of channel 3 (third in the order) must not change logits of channels 2, 0, 3
  # (orders 0..2) but may change channel 1 (order 3).
  t2 = t.at[:, 3].set((t[:, 3] + 1) % 5)
  l2 = head(z, t2)
  np.testing.assert_allclose(logits[:, [2, 0, 3]], l2[:, [2, 0, 3]], atol=1e-5)
  assert not np.allclose(logits[:, 1], l2[:, 1])


def test_dimwise_greedy_sample_equals_teacher_forced_argmax():
  head = heads.DimwiseARHead(num_channels=4, levels=5, cond_dim=6, width=32, depth=2, heads=4,
                             order=(2, 0, 3, 1), rngs=nnx.Rngs(1))
  z = jax.random.normal(jax.random.key(0), (3, 6))
  tokens = jax.jit(lambda z: head.sample(jax.random.key(0), z, temperature=0.0))(z)
  # Greedy decoding is a fixed point of teacher forcing: each token is the argmax given its prefix.
  np.testing.assert_array_equal(jnp.argmax(head(z, tokens), -1), tokens)
  s1 = head.sample(jax.random.key(5), z)
  s2 = head.sample(jax.random.key(5), z)
  np.testing.assert_array_equal(s1, s2)
  assert s1.dtype == jnp.int32 and int(s1.min()) >= 0 and int(s1.max()) < 5


def test_dimwise_bad_arguments():
  with pytest.raises(ValueError, match="order must be a permutation"):
    heads.DimwiseARHead(num_channels=3, levels=4, cond_dim=2, width=16, depth=1, heads=2,
                        order=(0, 0, 1), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="levels >= 2"):
    heads.DimwiseARHead(num_channels=3, levels=1, cond_dim=2, width=16, depth=1, heads=2, rngs=nnx.Rngs(0))
