"""Tests of the FlexTok tokenizer: contract shapes, prefix property, nested dropout, flow sampling, CFG,
training loss definition, jit/grad, sharding, errors."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxtok import sharding
from jaxtok.nn import norm as norm_lib
from jaxtok.quantizers import fsq
from jaxtok.samplers import flow, guidance
from jaxtok.tokenizers import api
from jaxtok.tokenizers import flextok as F
from jaxtok.tokenizers import prefix

K = 8  # tiny config registers


def _build(**kw):
  """(graphdef, state) of a tiny FlexTok, built in one jitted init, with the zero-initialised adaLN
  weights re-randomised so that every path of the network is live (a fresh adaLN-zero decoder would
  ignore its tokens)."""
  cfg = dict(name="flextok", size="tiny", zero_init_heads=False)
  cfg.update(kw)
  make = lambda: F.make_model(cfg, rngs=nnx.Rngs(0))
  graphdef, _ = nnx.split(nnx.eval_shape(make))

  @jax.jit
  def init():
    state = nnx.split(make())[1]
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(42), len(leaves))
    leaves = [jnp.where(jnp.all(l == 0), 0.05 * jax.random.normal(k, l.shape, l.dtype), l)
              if l.ndim == 2 else l for l, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, leaves)

  return graphdef, init()


@functools.lru_cache(maxsize=None)
def _tiny():
  graphdef, state = _build()
  encode = jax.jit(lambda s, x, k=None: nnx.merge(graphdef, s).encode(x, num_tokens=k),
                   static_argnums=2)
  return graphdef, state, encode


def _images(b=2, seed=0, size=32):
  return jax.random.uniform(jax.random.key(seed), (b, size, size, 3))


def _model():
  graphdef, state, _ = _tiny()
  return nnx.merge(graphdef, state)


def test_encode_decode_train_shapes_and_dtypes():
  graphdef, state, encode = _tiny()
  out = encode(state, _images())
  assert isinstance(out, api.EncodeOutput)
  assert out.tokens.shape == (2, K) and out.tokens.dtype == jnp.int32
  assert out.codes.shape == (2, K, 6) and out.codes.dtype == jnp.float32
  assert int(out.tokens.min()) >= 0 and int(out.tokens.max()) < 64000
  np.testing.assert_array_equal(out.codes, fsq.indices_to_codes(out.tokens, F.FSQ_LEVELS))
  assert out.losses == {}
  assert {"usage", "perplexity"} <= set(out.metrics)
  model = nnx.merge(graphdef, state)
  img = jax.eval_shape(lambda t: model.decode(t, rng=jax.random.key(0), num_steps=2), out.tokens)
  assert img.shape == (2, 32, 32, 3) and img.dtype == jnp.float32
  tr = jax.eval_shape(lambda x: model.train_forward(x, rng=jax.random.key(0)), _images())
  assert isinstance(tr, api.TrainOutput) and tr.recon is None
  assert set(tr.losses) == {"flow"} and tr.losses["flow"].shape == ()
  assert model.num_tokens == K and model.image_size == 32 and model.num_patches == 16


def test_num_tokens_prefix_equals_full_encode():
  _, state, encode = _tiny()
  x = _images(seed=1)
  full = encode(state, x)
  for k in (1, 3):
    part = encode(state, x, k)
    assert part.tokens.shape == (2, k)
    np.testing.assert_array_equal(part.tokens, full.tokens[:, :k])
    np.testing.assert_allclose(part.codes, full.codes[:, :k])


def test_prefix_tokens_ignore_later_registers():
  graphdef, state, _ = _tiny()
  k = 3
  z = jax.jit(lambda s, x: (lambda m: m.encode_latents(m.images_to_latents(x), K))(
      nnx.merge(graphdef, s)))
  regs = state["registers"].get_value()
  noise = 3.0 * jax.random.normal(jax.random.key(5), regs.shape)
  perturbed = jax.tree.map(lambda a: a, state)
  perturbed["registers"].set_value(regs.at[k:].add(noise[k:]))
  x = _images(seed=2)
  a, b = z(state, x), z(perturbed, x)
  np.testing.assert_allclose(a[:, :k], b[:, :k], atol=1e-6)
  assert float(jnp.abs(a[:, k:] - b[:, k:]).max()) > 1e-2  # later registers did change
  ta = fsq.quantize(a, F.FSQ_LEVELS).indices
  tb = fsq.quantize(b, F.FSQ_LEVELS).indices
  np.testing.assert_array_equal(ta[:, :k], tb[:, :k])
  # Perturbing an early register changes the later tokens' inputs (the mask is causal, not empty).
  early = jax.tree.map(lambda a: a, state)
  early["registers"].set_value(regs.at[0].add(noise[0]))
  assert float(jnp.abs(z(early, x)[:, 1:] - a[:, 1:]).max()) > 1e-4


def test_sample_keep_k_modes():
  rng = jax.random.key(0)
  u = np.asarray(prefix.sample_keep_k(rng, 4000, 8, "uniform"))
  assert u.dtype == np.int32 and set(u.tolist()) == set(range(1, 9))
  p2 = np.asarray(prefix.sample_keep_k(rng, 4000, 8, "pow2"))
  assert set(p2.tolist()) == {1, 2, 4, 8}
  up = np.asarray(prefix.sample_keep_k(rng, 8000, 8, "uniform_pow2"))
  assert set(up.tolist()) == {1, 2, 4, 8}
  # uniform over 1..8 rounded up: P(1)=1/8, P(2)=1/8, P(4)=2/8, P(8)=4/8.
  freq = np.array([(up == v).mean() for v in (1, 2, 4, 8)])
  np.testing.assert_allclose(freq, [0.125, 0.125, 0.25, 0.5], atol=0.03)
  with pytest.raises(ValueError, match="power-of-two"):
    prefix.sample_keep_k(rng, 2, 6, "pow2")
  with pytest.raises(ValueError, match="mode"):
    prefix.sample_keep_k(rng, 2, 8, "exp")


def test_nested_dropout_keeps_exactly_the_sampled_lengths():
  x = jax.random.normal(jax.random.key(0), (3, 5, 4))
  token = jnp.array([9.0, 8.0, 7.0, 6.0])
  keep = jnp.array([1, 5, 3])
  out = np.asarray(prefix.nested_dropout(x, keep, token))
  for b, k in enumerate([1, 5, 3]):
    np.testing.assert_array_equal(out[b, :k], np.asarray(x)[b, :k])
    np.testing.assert_array_equal(out[b, k:], np.broadcast_to(token, (5 - k, 4)))


def test_decoder_ignores_dropped_slots_and_null_ignores_all():
  model = _model()
  b = 2
  x = jax.random.normal(jax.random.key(1), (b, 32, 32, 3))
  t = jnp.array([0.3, 0.7])
  codes = fsq.indices_to_codes(jax.random.randint(jax.random.key(2), (b, K), 0, 64000),
                               F.FSQ_LEVELS)
  other = codes.at[:, 3:].set(-codes[:, 3:] + 0.25)
  keep = jnp.array([3, 3])
  off = jnp.zeros((b,), bool)
  vel = jax.jit(model.velocity)
  np.testing.assert_allclose(vel(x, t, codes, keep, off), vel(x, t, other, keep, off), atol=1e-6)
  full = jnp.array([K, K])
  assert float(jnp.abs(vel(x, t, codes, full, off) - vel(x, t, other, full, off)).max()) > 1e-4
  on = jnp.ones((b,), bool)
  np.testing.assert_allclose(vel(x, t, codes, full, on), vel(x, t, other, keep, on), atol=1e-6)


def _euler(velocity, x1, steps):
  """The decoder's sampler: `flow.sample` on the time-flipped field velocity(x, t) (t = 1 noise)."""
  return flow.sample(flow.flip_time(lambda x, t, c: velocity(x, t)), x1, steps=steps)


def test_euler_sampler_integrates_known_fields_exactly():
  x1 = jax.random.normal(jax.random.key(0), (2, 3))
  for steps in (1, 4, 7):
    # Each float32 Euler step rounds one product v dt and one difference, both of magnitude
    # <= max|x| + max|v| <= max|x1| + 1 here, each to within u = eps/2 relative; the float64
    # reference is exact to that precision: |error| <= 2 steps u (max|x1| + 1) = steps eps (...).
    tol = steps * np.finfo(np.float32).eps * (float(jnp.max(jnp.abs(x1))) + 1.0)
    ref = np.asarray(x1, np.float64)
    const = _euler(lambda x, t: jnp.full_like(x, 0.5), x1, steps)
    np.testing.assert_allclose(const, ref - 0.5, rtol=0, atol=tol)
    # v = t: x0 = x1 - sum_{i=1..T} (i/T) / T = x1 - (T + 1) / (2T).
    lin_t = _euler(lambda x, t: jnp.full_like(x, t), x1, steps)
    np.testing.assert_allclose(lin_t, ref - (steps + 1) / (2 * steps), rtol=0, atol=tol)
    # v = x: x0 = x1 (1 - 1/T)^T.
    lin_x = _euler(lambda x, t: x, x1, steps)
    np.testing.assert_allclose(lin_x, ref * (1 - 1 / steps) ** steps, rtol=0, atol=tol)
  # A straight path x_t = t n + (1 - t) x0 has constant velocity n - x0: Euler recovers x0 exactly.
  x0 = jax.random.normal(jax.random.key(1), (2, 3))
  np.testing.assert_allclose(_euler(lambda x, t: x1 - x0, x1, 5), x0, atol=1e-5)


def test_decode_integrates_the_velocity_and_applies_cfg_with_the_null_condition(monkeypatch):
  model = _model()
  tokens = jnp.zeros((2, 4), jnp.int32)
  rng = jax.random.key(3)
  noise = jax.random.normal(rng, (2, 32, 32, 3))
  c, u = 0.25, -0.5
  seen = {}

  def fake_velocity(self, x_t, t, codes, keep_k, null):
    seen["keep_k"], seen["codes"] = keep_k, codes
    return jnp.where(null[:, None, None, None], u, c) * jnp.ones_like(x_t)

  monkeypatch.setattr(F.FlexTok, "velocity", fake_velocity)
  out = model.decode(tokens, rng=rng, num_steps=3)
  np.testing.assert_allclose(out, jnp.clip((noise - c + 1) / 2, 0, 1), atol=1e-6)
  np.testing.assert_array_equal(seen["keep_k"], [4, 4])
  assert seen["codes"].shape == (2, K, 6)
  for s in (1.0, 3.0):
    out = model.decode(tokens, rng=rng, num_steps=3, cfg_scale=s)
    np.testing.assert_allclose(out, jnp.clip((noise - (u + s * (c - u)) + 1) / 2, 0, 1), atol=1e-6)
  np.testing.assert_allclose(guidance.cfg_uncond_base(jnp.float32(c), jnp.float32(u), 1.0), c)


def test_apg_combine_hand_values():
  cond = jnp.array([[1.0, 0.0]])
  zero = jnp.zeros_like(cond)
  # Difference orthogonal to cond: kept, scaled by (s - 1).
  g, avg = guidance.apg(cond, jnp.array([[1.0, -1.0]]), 3.0, zero)
  np.testing.assert_allclose(g, [[1.0, 2.0]], atol=1e-6)
  np.testing.assert_allclose(avg, [[0.0, 1.0]], atol=1e-6)
  # Difference parallel to cond: removed (eta = 0); eta = 1 keeps it.
  g, _ = guidance.apg(cond, jnp.array([[0.5, 0.0]]), 3.0, zero)
  np.testing.assert_allclose(g, cond, atol=1e-6)
  g, _ = guidance.apg(cond, jnp.array([[0.5, 0.0]]), 3.0, zero, eta=1.0)
  np.testing.assert_allclose(g, [[2.0, 0.0]], atol=1e-6)
  # Norm above the threshold 2.5 is rescaled to 2.5.
  g, _ = guidance.apg(cond, jnp.array([[1.0, -10.0]]), 3.0, zero)
  np.testing.assert_allclose(g, [[1.0, 5.0]], atol=1e-5)
  # Momentum -0.5: average = diff - 0.5 * previous average.
  g, avg = guidance.apg(cond, jnp.array([[1.0, -1.0]]), 3.0, jnp.array([[0.0, 2.0]]))
  np.testing.assert_allclose(avg, [[0.0, 0.0]], atol=1e-6)
  np.testing.assert_allclose(g, cond, atol=1e-6)


def test_decode_apg_follows_the_momentum_recursion(monkeypatch):
  model = _model()
  rng = jax.random.key(4)
  noise = jax.random.normal(rng, (2, 32, 32, 3))
  c, s, delta = 0.3, 2.0, 0.01
  e = jnp.array([delta, -delta, 0.0])  # orthogonal to the constant conditional field, norm < 2.5

  def fake_velocity(self, x_t, t, codes, keep_k, null):
    return jnp.where(null[:, None, None, None], c - e, c) * jnp.ones_like(x_t)

  monkeypatch.setattr(F.FlexTok, "velocity", fake_velocity)
  out = model.decode(jnp.zeros((2, 2), jnp.int32), rng=rng, num_steps=3, cfg_scale=s,
                     guidance="apg")
  # Averages over the 3 steps: e, e - e/2, e - e/4 -> mean (1 + 0.5 + 0.75) / 3.
  x0 = noise - c - (s - 1) * (2.25 / 3) * e
  np.testing.assert_allclose(out, jnp.clip((x0 + 1) / 2, 0, 1), atol=1e-6)
  with pytest.raises(ValueError, match="guidance"):
    model.decode(jnp.zeros((2, 2), jnp.int32), rng=rng, guidance="pag")


def test_decode_equals_euler_over_the_conditional_velocity_for_any_prefix():
  graphdef, state, encode = _tiny()
  tokens = encode(state, _images(seed=4)).tokens
  rng = jax.random.key(7)
  dec = jax.jit(lambda s, t, r, cfg: nnx.merge(graphdef, s).decode(t, rng=r, num_steps=2,
                                                                   cfg_scale=cfg),
                static_argnums=3)
  model = nnx.merge(graphdef, state)
  outs = {}
  for k in (2, K):
    out = dec(state, tokens[:, :k], rng, 1.0)
    assert out.shape == (2, 32, 32, 3)
    codes = jnp.pad(fsq.indices_to_codes(tokens[:, :k], F.FSQ_LEVELS), ((0, 0), (0, K - k), (0, 0)))
    keep = jnp.full((2,), k)
    vel = lambda x, t: model.velocity(x, jnp.full((2,), t), codes, keep, jnp.zeros((2,), bool))
    want = model.latents_to_images(_euler(vel, jax.random.normal(rng, (2, 32, 32, 3)), 2))
    np.testing.assert_allclose(out, want, atol=1e-5)
    outs[k] = out
  assert float(jnp.abs(outs[2] - outs[K]).max()) > 1e-4  # the tokens condition the image
  # Guidance changes the sample; scale 1 is the conditional sample above.
  assert float(jnp.abs(dec(state, tokens, rng, 3.0) - outs[K]).max()) > 1e-4


def test_decode_from_given_noise_equals_decode_from_its_rng():
  graphdef, state, encode = _tiny()
  tokens = encode(state, _images(seed=4)).tokens[:, :3]
  rng = jax.random.key(3)
  dec = jax.jit(lambda s, t, r, n: nnx.merge(graphdef, s).decode(t, rng=r, num_steps=2, noise=n))
  noise = jax.random.normal(rng, (2, 32, 32, 3))
  np.testing.assert_array_equal(dec(state, tokens, rng, None), dec(state, tokens, None, noise))
  assert float(jnp.abs(dec(state, tokens, None, noise + 1.0) - dec(state, tokens, None, noise)).max()) > 1e-3
  model = nnx.merge(graphdef, state)
  with pytest.raises(ValueError, match="noise must have shape"):
    model.decode(tokens, noise=noise[:1])
  with pytest.raises(TypeError, match="noise"):
    model.decode(tokens, noise=jnp.zeros((2, 32, 32, 3), jnp.int32))


def test_flow_targets_convention():
  x0, n = jnp.full((2, 1), 2.0), jnp.full((2, 1), -1.0)
  xt, v = F.flow_targets(x0, n, jnp.array([0.0, 1.0]))
  np.testing.assert_allclose(xt, [[2.0], [-1.0]])  # t = 0 clean, t = 1 noise
  np.testing.assert_allclose(v, [[-3.0], [-3.0]])  # v = noise - x0


def test_train_forward_loss_matches_its_definition():
  model = _model()
  x = _images(seed=5)
  rng = jax.random.key(11)
  out = jax.jit(lambda x, r: model.train_forward(x, rng=r))(x, rng)
  _, r_keep, r_null, r_t, r_noise = jax.random.split(rng, 5)
  x0 = model.images_to_latents(x)
  codes = fsq.quantize(model.encode_latents(x0, K), F.FSQ_LEVELS).codes
  keep = prefix.sample_keep_k(r_keep, 2, K, "uniform")
  null = jax.random.bernoulli(r_null, 0.1, (2,))
  t = jax.nn.sigmoid(jax.random.normal(r_t, (2,)))
  noise = jax.random.normal(r_noise, x0.shape)
  v = model.velocity(t[:, None, None, None] * noise + (1 - t[:, None, None, None]) * x0, t, codes,
                     keep, null)
  np.testing.assert_allclose(out.losses["flow"], jnp.mean((v - (noise - x0)) ** 2), rtol=1e-4)
  np.testing.assert_allclose(out.metrics["keep_k"], jnp.mean(keep.astype(jnp.float32)))


def test_grad_through_encode_and_train_forward():
  graphdef, state, _ = _tiny()
  x = _images(seed=6)

  # (images are passed as arguments: api.check_images cannot range-check a closed-over constant
  # under a trace.)
  def flow(s, x):
    return nnx.merge(graphdef, s).train_forward(x, rng=jax.random.key(0)).losses["flow"]

  def codes(s, x):
    return jnp.sum(nnx.merge(graphdef, s).encode(x).codes ** 2)

  g, ge = jax.jit(lambda s, x: (jax.grad(flow)(s, x), jax.grad(codes)(s, x)))(state, x)
  assert all(bool(jnp.all(jnp.isfinite(l))) for l in jax.tree.leaves(g))
  for path in (("registers",), ("enc_head", "kernel"), ("encoder", "blocks", 0, "attn", "qkv"),
               ("decoder", "blocks", 1, "ada", "kernel"), ("dec_head", "kernel"),
               ("time_fc1", "kernel")):
    leaf = g
    for p in path:
      leaf = leaf[p]
    assert float(jnp.abs(leaf.get_value()).sum()) > 0, path
  assert float(jnp.abs(ge["enc_patch"]["kernel"].get_value()).sum()) > 0
  assert float(jnp.abs(ge["dec_head"]["kernel"].get_value()).sum()) == 0


def test_vae_path_shapes_frozen_vae_and_posterior_rng():
  graphdef, state = _build(use_vae=True, vae_channels=(4, 4), vae_latent_channels=4,
                           vae_layers_per_block=1, vae_norm_groups=2, vae_mid_attention=False,
                           patch_size=4, vae_scaling_factor=0.5)
  model = nnx.merge(graphdef, state)
  assert model.latent_size == 16 and model.num_patches == 16 and model.latent_channels == 4
  x = _images(seed=7)

  @jax.jit
  def run(s, x):
    m = nnx.merge(graphdef, s)
    lat = m.images_to_latents(x)
    mean, _ = m.vae.encode(x * 2 - 1)
    grads = jax.grad(lambda s: jnp.sum(nnx.merge(graphdef, s).images_to_latents(x) ** 2))(s)
    return lat, mean, grads, m.encode(x).tokens

  lat, mean, grads, tokens = run(state, x)
  np.testing.assert_allclose(lat, 0.5 * mean, atol=1e-6)  # VAE mean times the scaling factor
  assert all(float(jnp.abs(l).sum()) == 0 for l in jax.tree.leaves(grads))  # the VAE is frozen
  assert tokens.shape == (2, K)
  img = jax.eval_shape(lambda t: model.decode(t, rng=jax.random.key(0), num_steps=1), tokens)
  assert img.shape == (2, 32, 32, 3)
  tr = jax.eval_shape(lambda x: model.train_forward(x, rng=jax.random.key(0)), x)
  assert tr.losses["flow"].shape == ()
  sampled = nnx.eval_shape(lambda: F.make_model(dict(
      size="tiny", use_vae=True, vae_channels=(8,), vae_latent_channels=4, vae_layers_per_block=1,
      vae_norm_groups=4, patch_size=4, vae_sample_posterior=True), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="rng"):
    sampled.encode(x)


def test_sharded_batch_equals_unsharded():
  graphdef, state, encode = _tiny()
  x = _images(b=8, seed=8)
  mesh = sharding.make_mesh()
  xs = jax.device_put(x, NamedSharding(mesh, P("data")))
  np.testing.assert_array_equal(encode(state, xs).tokens, encode(state, x).tokens)
  loss = jax.jit(lambda s, x: nnx.merge(graphdef, s).train_forward(
      x, rng=jax.random.key(1)).losses["flow"])
  np.testing.assert_allclose(loss(state, xs), loss(state, x), rtol=1e-5)


def test_release_sizes_abstract():
  model = nnx.eval_shape(lambda: F.make_model({"size": "d18_d28"}, rngs=nnx.Rngs(0)))
  assert model.num_patches == 256 and model.num_tokens == 256 and model.latent_channels == 16
  assert model.registers.shape == (256, 1152) and model.dec_register_pos.shape == (256, 1792)
  assert len(model.encoder.blocks) == 18 and len(model.decoder.blocks) == 28
  assert model.encoder.blocks[0].mlp.gate.kernel.shape == (1152, 3072)
  assert model.encoder.blocks[0].attn.scale == 8 / 64
  assert model.encoder.blocks[0].attn.qkv.shape == (1152, 3, 18, 64)
  assert model.decoder.blocks[0].ada.kernel.shape == (1792, 2 * 6 * 1792)
  assert model.enc_head.kernel.shape == (1152, 6)


def test_api_build_dispatches_to_flextok():
  tok = api.build({"name": "flextok", "size": "tiny"})
  assert tok.max_tokens == K and tok.image_size == 32
  params = tok.init(jax.random.key(0))
  out = tok.encode(params, _images(), num_tokens=2)
  assert out.tokens.shape == (2, 2)
  img = tok.decode(params, out.tokens, rng=jax.random.key(1), num_steps=1)
  assert img.shape == (2, 32, 32, 3)


def test_bad_inputs_raise_naming_the_argument():
  model = _model()
  x = _images()
  with pytest.raises(ValueError, match="images"):
    model.encode(_images(size=16))
  with pytest.raises(ValueError, match="images"):
    model.encode(jnp.zeros((2, 32, 32, 4)))
  with pytest.raises(TypeError, match="images"):
    model.encode(jnp.zeros((2, 32, 32, 3), jnp.int32))
  for bad in (0, K + 1):
    with pytest.raises(ValueError, match="num_tokens"):
      model.encode(x, num_tokens=bad)
  with pytest.raises(TypeError, match="num_tokens"):
    model.encode(x, num_tokens=2.0)
  tokens = jnp.zeros((2, 3), jnp.int32)
  with pytest.raises(ValueError, match="num_steps"):
    model.decode(tokens, rng=jax.random.key(0), num_steps=0)
  with pytest.raises(TypeError, match="tokens"):
    model.decode(tokens.astype(jnp.float32), rng=jax.random.key(0))
  with pytest.raises(ValueError, match="tokens"):
    model.decode(jnp.zeros((2, K + 1), jnp.int32), rng=jax.random.key(0))
  with pytest.raises(TypeError, match="cfg_scale"):
    model.decode(tokens, rng=jax.random.key(0), cfg_scale=jnp.float32(2.0))
  with pytest.raises(ValueError, match="rng"):
    model.train_forward(x, rng=None)
  with pytest.raises(ValueError, match="num_tokens"):
    F.make_model({"size": "tiny", "nested_dropout_mode": "pow2", "num_tokens": 6}, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="image_size"):
    F.make_model({"size": "tiny", "image_size": 36}, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="size"):
    F.make_model({"size": "d99"}, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="enc_width"):
    F.make_model({"size": "tiny", "enc_width": 30, "head_dim": 10}, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="cond_dropout"):
    F.make_model({"size": "tiny", "cond_dropout": 1.0}, rngs=nnx.Rngs(0))


# ---- the release's FlexBlock as composed from nn parts (moved from tests/nn/test_flextok_layers.py)


def _ln(x):
  return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)


def test_layer_norm_no_affine_float32():
  x = jax.random.normal(jax.random.key(0), (3, 16)) * 5 + 2
  np.testing.assert_allclose(F._layer_norm(x), _ln(np.asarray(x, np.float64)), rtol=1e-5, atol=1e-5)
  assert F._layer_norm(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_block_attention_and_swiglu_match_hand_computation_with_mup_scale_and_qk_norm():
  assert F.swiglu_hidden(1152, 4.0) == 3072  # d18 width
  assert F.swiglu_hidden(1792, 4.0) == 4778  # d28 width: int(2 * 7168 / 3)
  block = _model().encoder.blocks[0]  # width 32, head_dim 16: scale 8/16 = 0.5, not 1/sqrt(16)
  attn, mlp = block.attn, block.mlp
  assert attn.scale == 0.5 and attn.num_heads == 2
  names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(nnx.state(block))]
  assert not any("bias" in n or "scale" in n for n in names), names  # bias-free, no-affine norms
  x = np.asarray(jax.random.normal(jax.random.key(3), (2, 5, 32)), np.float64)
  qkv = np.asarray(attn.qkv.get_value(), np.float64)  # [W, 3, H, E]
  q, k, v = (np.einsum("btw,whe->bthe", x, qkv[:, i]) for i in range(3))
  q, k = _ln(q), _ln(k)
  mask = np.tril(np.ones((5, 5), bool))
  s = np.where(mask, np.einsum("bthe,bshe->bhts", q, k) * 0.5, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  ref = np.einsum("bhts,bshe,hew->btw", p, v, np.asarray(attn.out.get_value(), np.float64))
  got = jax.jit(lambda x, m: attn(x, mask=m))(jnp.asarray(x, jnp.float32), jnp.asarray(mask))
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
  w = lambda d: np.asarray(d.kernel.get_value(), np.float64)
  h1, h3 = x @ w(mlp.gate), x @ w(mlp.up)
  ref = (h1 / (1 + np.exp(-h1)) * h3) @ w(mlp.down)  # the release's fc2(silu(fc1 x) * fc3 x)
  np.testing.assert_allclose(mlp(jnp.asarray(x, jnp.float32)), ref, rtol=1e-4, atol=1e-5)
  assert mlp.gate.kernel.shape == (32, F.swiglu_hidden(32, 4.0))


def test_register_mask_equals_definition():
  n, k = 4, 3
  mask = np.asarray(F.register_mask(n, k))
  for q in range(n + k):
    for kv in range(n + k):
      if q < n:
        want = kv < n  # patches see only patches
      else:
        want = kv < n or kv <= q  # register i sees patches and registers j <= i
      assert mask[q, kv] == want, (q, kv)


def test_encoder_stack_prefix_of_registers_ignores_later_registers():
  encoder = _model().encoder
  n, k, width = 4, 5, 32
  mask = F.register_mask(n, k)
  run = jax.jit(lambda x: encoder(x, mask=mask))
  x = jax.random.normal(jax.random.key(4), (2, n + k, width))
  y = x.at[:, n + 3:].add(jax.random.normal(jax.random.key(5), (2, k - 3, width)))
  a, b = run(x), run(y)
  np.testing.assert_allclose(a[:, :n + 3], b[:, :n + 3], atol=1e-5)
  assert float(jnp.abs(a[:, n + 3:] - b[:, n + 3:]).max()) > 1e-3
  # Without the mask the prefix would change (the test can fail).
  full = jax.jit(lambda x: encoder(x))
  assert float(jnp.abs(full(x)[:, :n] - full(y)[:, :n]).max()) > 1e-4


def test_options_scan_remat_and_unknown_keys():
  """scan_layers + remat + attention_impl keep the outputs; an unknown config key is an error."""
  graphdef, state, _ = _tiny()
  x = _images(seed=9)
  loss = lambda g, s: nnx.merge(g, s).train_forward(x, rng=jax.random.key(2)).losses["flow"]
  ref = jax.jit(lambda s: loss(graphdef, s))(state)
  g2, s2 = _build(scan_layers=True, remat="dots", attention_impl="xla")
  # The scanned parameters are the unrolled ones stacked along a new first axis.
  flat = dict(nnx.to_flat_state(state))
  stacked = []
  for path, var in nnx.to_flat_state(s2):
    if path[0] in ("encoder", "decoder"):
      parts = [flat[path[:2] + (i,) + path[2:]].get_value() for i in range(2)]
      stacked.append((path, var.replace(jnp.stack(parts))))
    else:
      stacked.append((path, var.replace(flat[path].get_value())))
  s2 = nnx.from_flat_state(stacked)
  np.testing.assert_allclose(jax.jit(lambda s: loss(g2, s))(s2), ref, rtol=1e-5)
  with pytest.raises(ValueError, match="unknown FlexTok config key"):
    F.make_model({"size": "tiny", "enc_widht": 32}, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="head_dim"):
    F.make_model({"size": "tiny", "enc_width": 36}, rngs=nnx.Rngs(0))
