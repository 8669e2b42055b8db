"""Instella-T2I's released generator networks (`generators.instella_diff` / `instella_ar`): the
text mask, the shared Block's prefix / attn_pos options, sampling steps against the release's
formulas, the AR sampler against the release's growing-prefix recompute, text dropout, training on
the tiny configs, and argument checks. Parity of the networks with the release:
tests/convert/test_instella_t2i.py."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxtok.configs import instella_t2i as config_lib
from jaxtok.generators import instella_ar as A
from jaxtok.generators import instella_diff as D
from jaxtok.nn.block import Block


_call = nnx.jit(lambda m, *args: m(*args))


def _cfg(model):
  return dict(config_lib.get_config(f"model={model},tiny").model)


@functools.lru_cache(maxsize=None)
def _model(name):
  mod = D if name == "diff" else A
  return mod.make_model(_cfg(name), rngs=nnx.Rngs(3))


def _cond(batch=3):
  feats = jax.random.normal(jax.random.key(1), (2, batch, 5, 16))
  mask = jnp.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 1, 1]][:batch], jnp.int32)
  null = (jax.random.normal(jax.random.key(2), (2, 1, 5, 16)),
          jnp.array([[0, 0, 0, 0, 1]], jnp.int32))
  return feats, mask, null


def test_attention_mask_hand_derived():
  """Keys [text (T = 3); image (n = 2)]: text keys where the mask is 1, image keys all (or causal)."""
  mask = jnp.array([[0, 1, 1], [0, 0, 0]])
  got = np.asarray(D.attention_mask(mask, 2, causal=True))[:, 0].astype(int)
  want = np.array([[[0, 1, 1, 1, 0], [0, 1, 1, 1, 1]],
                   [[0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]])
  np.testing.assert_array_equal(got, want)
  full = np.asarray(D.attention_mask(mask, 2, causal=False))[:, 0].astype(int)
  np.testing.assert_array_equal(full[..., 3:], np.ones((2, 2, 2), int))
  np.testing.assert_array_equal(full[..., :3], want[..., :3])


@pytest.fixture(scope="module")
def block():
  return Block(16, 2, mlp_hidden=32, qkv_bias=False, qk_norm="rms", qk_norm_affine=True,
               rngs=nnx.Rngs(0))


def test_block_prefix_and_pos_options(block):
  """Off: bitwise the plain block. A zero-length prefix, or one whose keys are all masked, is no
  prefix; attn_pos p equals adding p to the norm's output by hand (norm1 shifted by p); visible
  prefix keys change the output."""
  x = jax.random.normal(jax.random.key(0), (2, 4, 16))
  base = block(x)
  np.testing.assert_array_equal(np.asarray(block(x, attn_pos=jnp.zeros((4, 16)))),
                                np.asarray(base))
  empty = block(x, prefix=jnp.zeros((2, 0, 16)))
  np.testing.assert_allclose(np.asarray(empty), np.asarray(base), atol=1e-6)
  prefix = jax.random.normal(jax.random.key(1), (2, 3, 16))
  hidden = jnp.concatenate([jnp.zeros((2, 1, 4, 3), bool), jnp.ones((2, 1, 4, 4), bool)], -1)
  np.testing.assert_allclose(np.asarray(block(x, prefix=prefix, mask=hidden)), np.asarray(base),
                             atol=1e-6)
  assert np.abs(np.asarray(block(x, prefix=prefix) - base)).max() > 1e-3
  # attn_pos by hand: the attention branch reads norm1(x) + p, the MLP branch is untouched.
  p = jax.random.normal(jax.random.key(2), (4, 16))
  h = block.norm1(x) + p
  y = x + block.attn(h)
  want = y + block.mlp(block.norm2(y))
  np.testing.assert_allclose(np.asarray(block(x, attn_pos=p)), np.asarray(want), atol=1e-5)


@pytest.mark.parametrize("protocol", [1, 2])
def test_diffusion_two_steps_follow_the_release_formulas(protocol):
  """S = 2 guided steps (w = 1.5, temperature 0.7) against the release's `BinaryDiffusion.sample`
  written out in numpy: x ~ Bernoulli(1/2); t = 1: l = ((1 + w) c - w u) / T, s = sigmoid(l),
  p0 = x (1 - s) + (1 - x) s; protocol 1: P = p0 (1 - t') + t'/2 at t' = 1/2; protocol 2: the
  product of that marginal and the one-step kernel, normalised; then t = 1/2: output p0 > 1/2.
  The draws are the sampler's keys (a Bernoulli draw is uniform < p)."""
  model = _model("diff")
  feats, mask, null = _cond()
  w, temp = 1.5, 0.7
  run = nnx.jit(lambda m, r: D.sample(r, m, feats, mask, null=null, steps=2, temperature=temp,
                                      cfg_scale=w, protocol=protocol))
  rng = jax.random.key(7)
  got = np.asarray(run(model, rng))
  shape = (3, 8, 8)
  r0, rest = jax.random.split(rng)
  x = np.asarray(jax.random.bernoulli(r0, 0.5, shape)).astype(np.float64)
  _, k1 = jax.random.split(rest)
  null_f = jnp.broadcast_to(null[0], feats.shape)
  null_m = jnp.broadcast_to(null[1], mask.shape)

  def p0_at(x, t):
    xi, tb = jnp.asarray(x, jnp.int32), jnp.full((3,), t)
    c = np.asarray(_call(model, xi, tb, feats, mask), np.float64)
    u = np.asarray(_call(model, xi, tb, null_f, null_m), np.float64)
    s = 1 / (1 + np.exp(-((1 + w) * c / temp - w * u / temp)))
    return x * (1 - s) + (1 - x) * s

  p0 = p0_at(x, 1.0)
  t, tm1 = 1.0, 0.5
  if protocol == 1:
    p_next = p0 * (1 - tm1) + 0.5 * tm1
  else:
    x0 = np.stack([p0, 1 - p0], -1)
    xt = np.stack([x, 1 - x], -1)
    un = (x0 * (1 - tm1) + 0.5 * tm1) * (xt - (t - tm1) * (xt - 0.5))
    p_next = (un / un.sum(-1, keepdims=True))[..., 0]
  x1 = (np.asarray(jax.random.uniform(k1, shape)) < p_next).astype(np.float64)
  want = (p0_at(x1, 0.5) > 0.5).astype(np.int32)
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("recompute", [False, True])
def test_ar_sampler_equals_the_release_growing_prefix_loop(recompute):
  """Greedy (temperature 0), guided (w = 2) with the bit bias delta = 0.8: the KV-cached loop and
  the fixed-length recompute both equal calling the model on the growing prefix as the release
  does, token by token, each bit thresholded after the bias from the previous bit."""
  model = _model("ar")
  feats, mask, null = _cond()
  w, delta = 2.0, 0.8
  got = np.asarray(nnx.jit(lambda m: A.sample(jax.random.key(0), m, feats, mask, null=null,
                                              temperature=0.0, cfg_scale=w, delta=delta,
                                              recompute=recompute))(model))
  null_f = jnp.broadcast_to(null[0], feats.shape)
  null_m = jnp.broadcast_to(null[1], mask.shape)
  call = _call
  out = np.zeros((3, 0, 8), np.int32)
  for _ in range(8):
    c = np.asarray(call(model, jnp.asarray(out), feats, mask))[:, -1]
    u = np.asarray(call(model, jnp.asarray(out), null_f, null_m))[:, -1]
    logit = (1 + w) * c - w * u
    bits = np.zeros((3, 8), np.int32)
    for j in range(8):
      lj = logit[:, j] + (0 if j == 0 else np.where(bits[:, j - 1] == 0, delta, -delta))
      bits[:, j] = lj > 0
    out = np.concatenate([out, bits[:, None]], axis=1)
  np.testing.assert_array_equal(got, out)


def test_ar_cached_steps_equal_the_full_pass():
  """Teacher-forced through the cache (the text's keys written once, one token per step), every
  position's logits equal one full causal pass (a left-padded and a mostly padded text row)."""
  model = _model("ar")
  feats, mask, _ = _cond()
  bits = jax.random.bernoulli(jax.random.key(4), 0.5, (3, 8, 8)).astype(jnp.int32)

  @nnx.jit
  def cached(m):
    caches, slot_mask = m.init_cache(feats, mask)
    rows = []
    for i in range(8):
      logits, caches = m.step(bits[:, max(i - 1, 0)], i, caches, slot_mask)
      rows.append(logits)
    return jnp.stack(rows, axis=1)

  np.testing.assert_allclose(np.asarray(cached(model)),
                             np.asarray(_call(model, bits[:, :-1], feats, mask)), atol=2e-5)


def test_ar_is_causal_over_image_tokens():
  """Position i's logits do not depend on tokens >= i: a prefix's logits are the full input's."""
  model = _model("ar")
  feats, mask, _ = _cond()
  bits = jax.random.bernoulli(jax.random.key(4), 0.5, (3, 7, 8)).astype(jnp.int32)
  full = _call(model, bits, feats, mask)
  np.testing.assert_allclose(np.asarray(_call(model, bits[:, :3], feats, mask)),
                             np.asarray(full[:, :4]), atol=1e-5)


def test_text_dropout_replaces_whole_rows_by_the_null_condition():
  feats, mask, null = _cond()
  f, m = D.drop_condition(jax.random.key(0), feats, mask, null, 0.5)
  dropped = np.asarray(jax.random.bernoulli(jax.random.key(0), 0.5, (3,)))
  assert 0 < dropped.sum() < 3  # this key drops some rows, not all
  for b in range(3):
    src_f, src_m = (null[0][:, 0], null[1][0]) if dropped[b] else (feats[:, b], mask[b])
    np.testing.assert_array_equal(np.asarray(f[:, b]), np.asarray(src_f))
    np.testing.assert_array_equal(np.asarray(m[b]), np.asarray(src_m))
  with pytest.raises(ValueError, match="null"):
    D.drop_condition(jax.random.key(0), feats, mask, None, 0.1)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["diff", "ar"])
def test_tiny_config_loss_falls(name):
  """The tiny config, trained with the release's loss (text dropout to a null row) on a fixed batch
  of random bits and text features: the loss at a fixed rng falls."""
  mod = D if name == "diff" else A
  model = mod.make_model(_cfg(name), rngs=nnx.Rngs(0))
  feats, mask, null = _cond()
  bits = jax.random.bernoulli(jax.random.key(9), 0.5, (3, 8, 8)).astype(jnp.int32)
  opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
  evaluate = nnx.jit(lambda m: mod.loss(m, bits, feats, mask, rng=jax.random.key(0),
                                        train=False)[0])

  @nnx.jit
  def step(model, opt, rng):
    grad_fn = nnx.value_and_grad(
        lambda m: mod.loss(m, bits, feats, mask, rng=rng, null=null), has_aux=True)
    (value, _), grads = grad_fn(model)
    opt.update(model, grads)
    return value

  before = float(evaluate(model))
  for i in range(25):
    step(model, opt, jax.random.key(100 + i))
  after = float(evaluate(model))
  assert after < 0.8 * before, (before, after)


def test_bad_inputs_are_refused_by_name():
  model = _model("diff")
  feats, mask, _ = _cond()
  bits = jnp.zeros((3, 8, 8), jnp.int32)
  with pytest.raises(ValueError, match="features must be"):
    model(bits, 0.5, feats[:1], mask)
  with pytest.raises(ValueError, match="mask must be"):
    model(bits, 0.5, feats, mask[:, :4])
  with pytest.raises(TypeError, match="mask must be an integer"):
    model(bits, 0.5, feats, mask.astype(jnp.float32))
  with pytest.raises(ValueError, match="bits must be"):
    model(bits[:, :4], 0.5, feats, mask)
  with pytest.raises(ValueError, match="cfg_scale"):
    D.sample(jax.random.key(0), model, feats, mask, cfg_scale=2.0)
  with pytest.raises(ValueError, match="bits must be"):
    _model("ar")(jnp.zeros((3, 8, 8)), feats, mask)  # at most N - 1 input tokens
  with pytest.raises(ValueError, match="unknown instella_diff config key"):
    D.make_model(dict(_cfg("diff"), num_classes=10), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="scan_layers"):
    A.make_model(dict(_cfg("ar"), scan_layers=True), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="'model' must be"):
    config_lib.get_config("model=gpt")
