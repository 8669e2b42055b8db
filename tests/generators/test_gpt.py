"""Tests of the causal token model: KV cache equals recompute, causality, conditioning, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.generators import gpt as gpt_lib


def _model(**kw):
  cfg = dict(codebook_size=11, seq_len=9, num_classes=3, width=32, depth=2, heads=4, class_dropout=0.1)
  cfg.update(kw)
  return gpt_lib.GPT(**cfg, rngs=nnx.Rngs(0))


def test_kv_cache_logits_equal_full_recompute():
  model = _model()
  tokens = jax.random.randint(jax.random.key(1), (2, 9), 0, 11)
  labels = jnp.array([2, -1])
  full = model(tokens, labels)  # [B, N, K]
  cache = model.init_cache(2)
  cond = model.condition_ids(labels, 2)
  logits, cache = model.prefill(cond[:, None], cache)
  np.testing.assert_allclose(logits, full[:, 0], atol=1e-5)
  for i in range(1, 9):
    logits, cache = model.step(tokens[:, i - 1], jnp.int32(i), cache)
    np.testing.assert_allclose(logits, full[:, i], atol=1e-5, err_msg=f"position {i}")


def test_kv_cache_step_under_jit_with_traced_position():
  model = _model()
  graphdef, state = nnx.split(model)
  tokens = jax.random.randint(jax.random.key(2), (2, 9), 0, 11)
  full = model(tokens, None)

  @jax.jit
  def run(state, tokens):
    m = nnx.merge(graphdef, state)
    cache = m.init_cache(2)
    first, cache = m.prefill(m.condition_ids(None, 2)[:, None], cache)

    def body(cache, i):
      logits, cache = m.step(tokens[:, i - 1], i, cache)
      return cache, logits
    _, rest = jax.lax.scan(body, cache, jnp.arange(1, 9))
    return jnp.concatenate([first[:, None], rest.transpose(1, 0, 2)], axis=1)

  np.testing.assert_allclose(run(state, tokens), full, atol=1e-5)


def test_causality_future_tokens_do_not_change_past_logits():
  model = _model()
  a = jax.random.randint(jax.random.key(3), (1, 9), 0, 11)
  b = a.at[:, 5:].set((a[:, 5:] + 1) % 11)
  la, lb = model(a, None), model(b, None)
  np.testing.assert_allclose(la[:, :6], lb[:, :6], atol=1e-6)
  assert not np.allclose(la[:, 6:], lb[:, 6:])


def test_class_conditioning_and_dropout():
  model = _model()
  tokens = jnp.zeros((4, 9), jnp.int32)
  c0 = model(tokens, jnp.zeros((4,), jnp.int32))
  c1 = model(tokens, jnp.ones((4,), jnp.int32))
  assert not np.allclose(c0, c1)
  null = model(tokens, None)
  np.testing.assert_allclose(model(tokens, -jnp.ones((4,), jnp.int32)), null, atol=1e-6)
  # With dropout 0.999... every row becomes the null condition.
  m = _model(class_dropout=0.999999)
  d = m(tokens, jnp.ones((4,), jnp.int32), train=True, rng=jax.random.key(0))
  np.testing.assert_allclose(d, m(tokens, None), atol=1e-6)
  with pytest.raises(ValueError, match="needs rng"):
    model(tokens, jnp.ones((4,), jnp.int32), train=True)


def test_loss_and_grad():
  model = _model()
  graphdef, state = nnx.split(model)
  tokens = jax.random.randint(jax.random.key(4), (2, 9), 0, 11)

  def f(state):
    return gpt_lib.loss(nnx.merge(graphdef, state), tokens, jnp.array([0, 1]), train=False)[0]
  value, grads = jax.jit(jax.value_and_grad(f))(state)
  # A fresh model is near uniform: the loss is close to log K.
  assert abs(float(value) - np.log(11)) < 0.5
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_bad_arguments():
  with pytest.raises(ValueError, match="codebook_size must be >= 2"):
    _model(codebook_size=1)
  with pytest.raises(ValueError, match="width must be divisible by heads"):
    _model(width=30)
  with pytest.raises(ValueError, match="more than seq_len=9"):
    _model()(jnp.zeros((1, 10), jnp.int32))
  with pytest.raises(ValueError, match="class_dropout must be in"):
    _model(class_dropout=1.0)
