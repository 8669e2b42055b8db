"""Dropout in the shared parts (RAR's training recipe): attention-probability dropout against a numpy
reference with the same keep mask, the Block's four dropout sites, per-layer keys in the Stack
(scanned == unrolled), the deterministic pass unchanged, and RAR's training pass."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.nn import attention as A
from jaxtok.nn.block import Block
from jaxtok.nn.stack import Stack

W, H, T = 16, 2, 6


def _block(rate=0.25, attn_rate=0.3, seed=0, adaln=False):
  return Block(W, H, mlp_hidden=32, dropout=rate, attn_dropout=attn_rate, adaln=adaln,
               rngs=nnx.Rngs(seed))


def test_dropout_keeps_the_expected_fraction_and_scales_by_the_keep_rate():
  x = jnp.ones((200, 100))
  y = np.asarray(A.dropout(x, 0.25, jax.random.key(0)))
  assert set(np.unique(y)) == {0.0, np.float32(1 / 0.75)}
  assert abs(np.mean(y > 0) - 0.75) < 0.01
  assert A.dropout(x, 0.0, jax.random.key(0)) is x


def test_attention_probability_dropout_equals_the_numpy_reference():
  r = np.random.default_rng(0)
  q, k, v = (jnp.asarray(r.normal(size=(2, T, H, 4)), jnp.float32) for _ in range(3))
  mask = jnp.asarray(r.random((2, 1, T, T)) > 0.2)
  rng = jax.random.key(3)
  got = jax.jit(lambda q, k, v: A.attend(q, k, v, mask=mask, causal=True, dropout_rate=0.4,
                                         dropout_rng=rng))(q, k, v)
  keep = np.asarray(jax.random.bernoulli(rng, 0.6, (2, H, T, T)))
  qn, kn, vn = (np.asarray(a, np.float64) for a in (q, k, v))
  s = np.einsum("bthe,bshe->bhts", qn, kn) / 2.0
  allowed = np.asarray(mask) & np.tril(np.ones((T, T), bool))
  s = np.where(allowed, s, -1e300)
  p = np.exp(s - s.max(-1, keepdims=True))
  p = p / p.sum(-1, keepdims=True)
  ref = np.einsum("bhts,bshe->bthe", np.where(keep, p / 0.6, 0.0), vn)
  np.testing.assert_allclose(got, ref, atol=1e-5)
  # Without a key the rate does nothing: the fused kernel's deterministic attention.
  plain = A.attend(q, k, v, mask=mask, causal=True)
  np.testing.assert_array_equal(A.attend(q, k, v, mask=mask, causal=True, dropout_rate=0.4), plain)


def test_block_dropout_sites_and_the_deterministic_pass():
  block, plain = _block(), _block(0.0, 0.0)
  x = jax.random.normal(jax.random.key(1), (2, T, W))
  # No key: bitwise the block without dropout (same parameters, same seed).
  np.testing.assert_array_equal(block(x, causal=True), plain(x, causal=True))
  rng = jax.random.key(7)
  got = block(x, causal=True, dropout_rng=rng)
  # By hand from the parts: attention probabilities, attention output, MLP hidden, MLP output.
  k = jax.random.split(rng, 4)
  y = block.attn(block.norm1(x), causal=True, dropout_rate=0.3, dropout_rng=k[0])
  x1 = x + A.dropout(y, 0.25, k[1])
  m = block.mlp(block.norm2(x1), dropout_rate=0.25, dropout_rng=k[2])
  np.testing.assert_allclose(got, x1 + A.dropout(m, 0.25, k[3]), atol=1e-6)
  assert not np.allclose(got, block(x, causal=True, dropout_rng=jax.random.key(8)))
  with pytest.raises(ValueError, match=r"dropout must be a rate in \[0, 1\)"):
    _block(rate=1.0)
  with pytest.raises(ValueError, match=r"attn_dropout must be a rate in \[0, 1\)"):
    _block(attn_rate=-0.1)


@pytest.mark.slow
def test_stack_gives_each_layer_its_own_key_scanned_or_not():
  make = lambda r: Block(W, H, mlp_hidden=32, dropout=0.2, attn_dropout=0.2, rngs=r)
  unrolled = Stack(3, make, rngs=nnx.Rngs(0))
  scanned = Stack(3, make, scan_layers=True, rngs=nnx.Rngs(0))
  layers = nnx.to_pure_dict(nnx.state(unrolled))["blocks"]  # the same weights, stacked
  state = nnx.state(scanned)
  nnx.replace_by_pure_dict(state, {"blocks": jax.tree.map(lambda *a: jnp.stack(a),
                                                          *[layers[i] for i in range(3)])})
  nnx.update(scanned, state)
  x = jax.random.normal(jax.random.key(1), (2, T, W))
  rng = jax.random.key(5)
  want = x
  for i, block in enumerate(unrolled.blocks):
    want = block(want, causal=True, dropout_rng=jax.random.fold_in(rng, i))
  np.testing.assert_allclose(unrolled(x, causal=True, dropout_rng=rng), want, atol=1e-6)

  def loss(model, x):
    return jnp.sum(model(x, causal=True, dropout_rng=rng) ** 2)

  for model in (unrolled, scanned):  # the two layouts draw the same masks
    np.testing.assert_allclose(nnx.jit(loss)(model, x), jnp.sum(want ** 2), rtol=1e-5)
  g_u = nnx.grad(loss)(unrolled, x)
  g_s = nnx.grad(loss)(scanned, x)
  np.testing.assert_allclose(g_s["blocks"]["mlp"]["up"]["kernel"][1],
                             g_u["blocks"][1]["mlp"]["up"]["kernel"], atol=1e-5)


def test_rar_trains_with_the_released_dropout_and_evaluates_without_it():
  from jaxtok.configs import rar as rar_config
  from jaxtok.generators import rar
  cfg = rar_config.get_config("tiny").model
  assert (rar_config.get_config("size=B").model.dropout,
          rar_config.get_config("size=B").model.attn_dropout) == (0.1, 0.1)
  plain = rar.make_model(cfg, rngs=nnx.Rngs(0))
  cfg.update(dropout=0.1, attn_dropout=0.1)
  model = rar.make_model(cfg, rngs=nnx.Rngs(0))
  # Move every weight off its (adaLN-zero) initialisation, the same way in both models, so that
  # the blocks' branches are live.
  params = nnx.state(plain, nnx.Param)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(9), len(leaves))
  moved = jax.tree.unflatten(tree, [p + 0.05 * jax.random.normal(k, p.shape, p.dtype)
                                    for p, k in zip(leaves, keys)])
  nnx.update(plain, moved)
  nnx.update(model, moved)
  tokens = jax.random.randint(jax.random.key(0), (2, cfg.seq_len), 0, cfg.codebook_size)
  labels = jnp.array([0, 1])
  # Evaluation and sampling passes are the dropout-free model's.
  np.testing.assert_array_equal(model(tokens, labels), plain(tokens, labels))
  a = model(tokens, labels, train=True, rng=jax.random.key(1))
  b = model(tokens, labels, train=True, rng=jax.random.key(2))
  c = plain(tokens, labels, train=True, rng=jax.random.key(1))
  assert not np.allclose(a, c) and not np.allclose(a, b)
  np.testing.assert_array_equal(a, model(tokens, labels, train=True, rng=jax.random.key(1)))
