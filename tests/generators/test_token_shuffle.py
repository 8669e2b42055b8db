"""Token-Shuffle: shuffle/unshuffle by hand, the N / s^2 transformer length, s = 1 is a GPT, the KV
cache (prefill/step and the group sampler) equals recompute, bad arguments."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.generators import gpt as gpt_lib
from jaxtok.generators import token_shuffle as ts_lib
from jaxtok.samplers import autoregressive, categorical

CFG = dict(codebook_size=11, seq_len=16, num_classes=3, width=32, depth=2, heads=4, class_dropout=0.1)


def _model(**kw):
  return ts_lib.TokenShuffle(**{**CFG, "shuffle": 2, **kw}, rngs=nnx.Rngs(0))


def test_shuffle_unshuffle_4x4_s2_by_hand():
  # Grid indices          windows (raster over the 2x2 grid of windows), each in raster order
  #  0  1 |  2  3          w0 = 0 1 4 5     w1 = 2 3 6 7
  #  4  5 |  6  7          w2 = 8 9 12 13   w3 = 10 11 14 15
  #  ------+------
  #  8  9 | 10 11
  # 12 13 | 14 15
  perm = ts_lib.shuffle_permutation(4, 4, 2)
  np.testing.assert_array_equal(perm, [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15])
  grid = jnp.arange(16)[None]
  windows = ts_lib.shuffle(grid, 4, 4, 2)
  np.testing.assert_array_equal(windows[0], [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13],
                                             [10, 11, 14, 15]])
  np.testing.assert_array_equal(ts_lib.unshuffle(windows, 4, 4, 2), grid)
  w = jax.random.randint(jax.random.key(0), (2, 4, 4), 0, 99)
  np.testing.assert_array_equal(ts_lib.shuffle(ts_lib.unshuffle(w, 4, 4, 2), 4, 4, 2), w)
  # A 2x4 grid (two windows side by side) and s = 1 (identity).
  np.testing.assert_array_equal(ts_lib.shuffle_permutation(2, 4, 2), [0, 1, 4, 5, 2, 3, 6, 7])
  np.testing.assert_array_equal(ts_lib.shuffle_permutation(4, 4, 1), np.arange(16))


def test_transformer_sees_n_over_s2_positions():
  model = _model()
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 11)
  assert model.transformer_inputs(tokens).shape == (2, 16 // 4, 32)
  assert model(tokens).shape == (2, 16, 11)
  cache = model.init_cache(2)
  assert jax.tree.leaves(cache)[0].shape[2] == 4  # KV slots [B, H, S, E]: S = N / s^2


def test_s1_with_identity_shuffle_is_the_gpt():
  """s = 1, compress/expand = identity, residual-MLP output kernels = 0, embed/blocks/norm/head
  taken from a GPT: the logits and the loss are the GPT's (same layout [cond, t_0..t_{N-2}])."""
  g = gpt_lib.GPT(**CFG, rngs=nnx.Rngs(3))
  m = ts_lib.TokenShuffle(**dict(CFG, shuffle=1), rngs=nnx.Rngs(4))
  m.net.embed, m.net.blocks, m.net.norm, m.net.head = g.net.embed, g.net.blocks, g.net.norm, g.net.head
  m.compress.kernel.set_value(jnp.eye(32))
  m.expand.kernel.set_value(jnp.eye(32))
  for mlp in (m.fuse, m.sub_mlps[0]):
    mlp.down.kernel.set_value(jnp.zeros_like(mlp.down.kernel.get_value()))
  tokens = jax.random.randint(jax.random.key(2), (3, 16), 0, 11)
  labels = jnp.array([0, 2, -1])
  np.testing.assert_allclose(m(tokens, labels), g(tokens, labels), atol=1e-5)
  lm = ts_lib.loss(m, tokens, labels, train=False)[0]
  lg = gpt_lib.loss(g, tokens, labels, train=False)[0]
  np.testing.assert_allclose(lm, lg, rtol=1e-6)


def test_kv_cache_equals_recompute():
  model = _model()
  tokens = jax.random.randint(jax.random.key(5), (2, 16), 0, 11)
  labels = jnp.array([1, -1])
  full = ts_lib.shuffle(model(tokens, labels), 4, 4, 2)  # [B, M, s^2, K]
  windows = ts_lib.shuffle(tokens, 4, 4, 2)
  cache = model.init_cache(2)
  logits, cache = model.prefill(model.condition_ids(labels, 2)[:, None], cache)
  np.testing.assert_allclose(logits, full[:, 0], atol=1e-5)
  for m in range(1, 4):
    logits, cache = model.step(windows[:, m - 1], jnp.int32(m), cache)
    np.testing.assert_allclose(logits, full[:, m], atol=1e-5, err_msg=f"window {m}")


def test_group_sampler_with_cache_equals_recompute():
  """The jitted cached sampler (windows drawn as groups of s^2) equals drawing each window from a
  full teacher-forced forward of the tokens so far, with the same noise fold_in(rng, m)."""
  model = _model()
  graphdef, state = nnx.split(model)
  rng = jax.random.key(7)
  labels = jnp.array([2, 0])

  @jax.jit
  def cached(state):
    m = nnx.merge(graphdef, state)
    prompt = m.condition_ids(labels, 2)[:, None]
    out = autoregressive.sample(rng, m.prefill, m.step, m.init_cache(2), prompt, num_tokens=4,
                                top_k=5)
    return m.tokens_from_windows(out)

  got = cached(state)
  assert got.shape == (2, 16) and got.dtype == jnp.int32
  tokens = jnp.zeros((2, 16), jnp.int32)
  for m in range(4):
    logits = ts_lib.shuffle(model(tokens, labels), 4, 4, 2)[:, m]
    win = categorical.sample(jax.random.fold_in(rng, m), logits, top_k=5)
    tokens = ts_lib.unshuffle(ts_lib.shuffle(tokens, 4, 4, 2).at[:, m].set(win), 4, 4, 2)
  np.testing.assert_array_equal(got, tokens)


def test_bad_arguments():
  with pytest.raises(ValueError, match=r"shuffle must be >= 1 and divide the grid 4x4, got shuffle=3"):
    _model(shuffle=3)
  with pytest.raises(ValueError, match="width must be divisible by shuffle\\^2=16, got width=24"):
    ts_lib.TokenShuffle(**dict(CFG, shuffle=4, width=24, heads=4), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="seq_len must be a square number"):
    ts_lib.TokenShuffle(**dict(CFG, seq_len=8), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="grid_width must divide seq_len=16"):
    _model(grid_width=3)
  with pytest.raises(ValueError, match="tokens must have seq_len=16 positions, got 8"):
    _model()(jnp.zeros((1, 8), jnp.int32))
  m = _model()
  with pytest.raises(ValueError, match=r"window must be int32 \[B, s\^2=4\], got shape \(1, 3\)"):
    m.step(jnp.zeros((1, 3), jnp.int32), 1, m.init_cache(1))


def test_make_model_config_is_strict():
  m = ts_lib.make_model({"name": "token_shuffle", **CFG, "shuffle": 2}, rngs=nnx.Rngs(0))
  assert m.num_windows == 4 and m.grid == (4, 4)
  with pytest.raises(ValueError, match=r"token_shuffle config 'seq_len' must be int, got 12.5"):
    ts_lib.make_model({"name": "token_shuffle", **CFG, "seq_len": 12.5}, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"unknown token_shuffle config key\(s\) \['shufle'\]"):
    ts_lib.make_model({"name": "token_shuffle", **CFG, "shufle": 2}, rngs=nnx.Rngs(0))
