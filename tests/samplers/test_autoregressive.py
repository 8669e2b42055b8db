import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.samplers import autoregressive as ar

V = 7
TABLE = jax.random.normal(jax.random.key(1), (V, V)) * 2


def prefill(tokens, cache):
  return TABLE[tokens[:, -1]], cache + 1


def step(tok, pos, cache):
  return TABLE[tok], cache + 1


def logits_fn(seq, length):
  return TABLE[jax.lax.dynamic_index_in_dim(seq, length - 1, 1, keepdims=False)]


def test_cached_equals_recompute_and_greedy():
  prompt = jnp.array([[1, 2], [3, 4]], jnp.int32)
  a = jax.jit(lambda r: ar.sample(r, prefill, step, jnp.zeros(()), prompt, num_tokens=6))(jax.random.key(0))
  b = ar.sample_recompute(jax.random.key(0), logits_fn, prompt, num_tokens=6)
  np.testing.assert_array_equal(a, b)
  g = ar.sample(jax.random.key(5), prefill, step, jnp.zeros(()), prompt, num_tokens=4, top_k=1)
  t = np.asarray(TABLE)
  prev = np.asarray(prompt[:, -1])
  for i in range(4):
    prev = t[prev].argmax(-1)
    np.testing.assert_array_equal(g[:, i], prev)
