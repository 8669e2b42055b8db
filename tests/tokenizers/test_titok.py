"""TiTok / One-D-Piece: shapes, the legacy reshape, the tail-drop prefix property, two-stage head,
jit/grad, and parameter counts of the released configs (abstract, nothing allocated)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.tokenizers import titok, vqgan

TINY = dict(image_size=32, patch_size=8, encoder_width=16, encoder_depth=1, encoder_heads=2,
            decoder_width=16, decoder_depth=2, decoder_heads=2, num_latent_tokens=6, token_size=4,
            codebook_size=16)
PROXY = dict(decoder_head="proxy_codes", proxy_codebook_size=12, pixel_ch=8, pixel_ch_mult=(1, 1, 2, 2),
             pixel_num_res_blocks=1, pixel_z_channels=4, pixel_num_groups=4)


def _images(b=2, seed=0):
  return jax.random.uniform(jax.random.key(seed), (b, 32, 32, 3))


def _run(model, fn, *args):
  """fn(model, *args) under jax.jit through split/merge (eager nnx is slow on a shared CPU)."""
  g, s = nnx.split(model)
  return jax.jit(lambda s, *a: fn(nnx.merge(g, s), *a))(s, *args)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_vq_pixels_shapes_dtypes_and_prefix_encode():
  m = titok.make_model(dict(TINY, name="titok"), rngs=nnx.Rngs(0))
  x = _images()

  def f(m, x):
    full = m.encode(x)
    part = m.encode(x, num_tokens=3)
    return full, part, m.decode(full.tokens), m.train_forward(x, rng=jax.random.key(1))

  full, part, img, tr = _run(m, f, x)
  assert full.tokens.shape == (2, 6) and full.tokens.dtype == jnp.int32
  assert full.codes.shape == (2, 6, 4) and full.codes.dtype == jnp.float32
  assert int(full.tokens.min()) >= 0 and int(full.tokens.max()) < 16
  np.testing.assert_array_equal(part.tokens, full.tokens[:, :3])
  assert img.shape == (2, 32, 32, 3) and img.dtype == jnp.float32
  assert set(full.losses) >= {"commitment", "codebook"} and "usage" in full.metrics
  # l2-normalised lookup: codes are unit vectors.
  np.testing.assert_allclose(jnp.linalg.norm(full.codes, axis=-1), 1.0, rtol=1e-5)
  # Without tail drop, train_forward decodes all K tokens.
  np.testing.assert_allclose(tr.recon, img, rtol=1e-5, atol=1e-5)
  assert "kept_tokens" not in tr.metrics


def test_fsq_bottleneck():
  m = titok.make_model(dict(TINY, quantizer="fsq", fsq_levels=(5, 5, 3, 3)), rngs=nnx.Rngs(0))
  out, img = _run(m, lambda m, x: (m.encode(x), m.decode(m.encode(x).tokens)), _images())
  assert out.tokens.dtype == jnp.int32 and int(out.tokens.max()) < 225
  assert img.shape == (2, 32, 32, 3) and not hasattr(m, "codebook")
  with pytest.raises(ValueError, match="fsq_levels"):
    titok.make_model(dict(TINY, quantizer="fsq", fsq_levels=(5, 5)), rngs=nnx.Rngs(0))


def test_legacy_reshape_equals_numpy_reordering():
  cfg = dict(TINY, token_size=16)  # W = D so the projection can be made the identity
  correct = titok.make_model(cfg, rngs=nnx.Rngs(3))
  legacy = titok.make_model(dict(cfg, legacy_reshape=True), rngs=nnx.Rngs(3))
  for m in (correct, legacy):
    m.encoder.conv_out.kernel.set_value(jnp.eye(16))
  enc = lambda m, x: m.encoder(x, m.latent_tokens.get_value())
  x = _images(3)
  lat = np.asarray(_run(correct, enc, x))  # [B, K, W], the latents themselves
  got = np.asarray(_run(legacy, enc, x))
  b, k, w = lat.shape
  ref = lat.reshape(b * k * w).reshape(b, w, k).transpose(0, 2, 1)  # torch .reshape(B, W, K, 1)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
  assert not np.allclose(got, lat)
  # With a real projection: the reordered latents times the 1x1 kernel plus bias.
  kernel = jax.random.normal(jax.random.key(0), (16, 16))
  bias = jnp.arange(16.0)
  legacy.encoder.conv_out.kernel.set_value(kernel)
  legacy.encoder.conv_out.bias.set_value(bias)
  np.testing.assert_allclose(_run(legacy, enc, x), ref @ np.asarray(kernel) + np.asarray(bias),
                             rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def onedpiece():
  m = titok.make_model(dict(TINY, name="onedpiece"), rngs=nnx.Rngs(1))
  # At init the latents barely reach the pixels (0.02-std projections); a unit-scale decoder_embed
  # makes every kept token visible in the output so that the prefix checks can discriminate.
  m.decoder.decoder_embed.kernel.set_value(jax.random.normal(jax.random.key(9), (4, 16)))
  return m


def test_onedpiece_prefix_decode_equals_masked_tail(onedpiece):
  m = onedpiece
  assert m.tail_drop
  x = _images()
  tokens = _run(m, lambda m, x: m.encode(x).tokens, x)
  # Replace the tail with other tokens: masked decoding must not see them.
  other = (tokens + 5) % 16

  def f(m, tokens, other):
    outs = {}
    for k in (1, 4):
      outs[k] = (m.decode(tokens[:, :k]), m.decode(tokens, num_tokens=k),
                 m.decode(jnp.concatenate([tokens[:, :k], other[:, k:]], 1), num_tokens=k),
                 m.decode(tokens, num_tokens=jnp.full((2,), k)))
    return outs, m.decode(tokens), m.decode(tokens, num_tokens=6)

  outs, full, full_masked = _run(m, f, tokens, other)
  # Images are ~1e-2 at init (the head's 0.02-std init), so tolerances are absolute and small.
  scale = float(jnp.abs(full).max())
  for k, (prefix, masked, masked_other, per_sample) in outs.items():
    np.testing.assert_allclose(prefix, masked, rtol=1e-5, atol=1e-5 * scale, err_msg=f"k={k}")
    np.testing.assert_allclose(masked_other, masked, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(per_sample, masked, rtol=1e-5, atol=1e-5 * scale)
  np.testing.assert_allclose(full_masked, full, rtol=1e-5, atol=1e-5 * scale)
  assert float(jnp.abs(outs[1][0] - outs[4][0]).max()) > 1e-3 * scale
  assert float(jnp.abs(outs[4][0] - full).max()) > 1e-3 * scale


def test_onedpiece_train_forward_draws_one_length_and_masks_the_tail(onedpiece):
  m = onedpiece
  x = _images()

  g, s = nnx.split(m)

  @jax.jit
  def f(s, rng):
    m = nnx.merge(g, s)
    tr = m.train_forward(x, rng=rng)
    # The reference: decode the physically truncated codes, one static length at a time.
    refs = [m.decode_codes(m.encode(x).codes[:, :n]) for n in range(1, 7)]
    return tr, jnp.stack(refs)

  lengths = set()
  for seed in range(4):
    tr, refs = f(s, jax.random.key(seed))
    n = int(tr.metrics["kept_tokens"])
    assert 1 <= n <= 6
    lengths.add(n)
    ref = refs[n - 1]
    np.testing.assert_allclose(tr.recon, ref, rtol=1e-5, atol=1e-5 * float(jnp.abs(ref).max()))
  assert len(lengths) > 1


def test_two_stage_head_decodes_through_vqgan_soft_codes():
  m = titok.make_model(dict(TINY, legacy_reshape=True, **PROXY), rngs=nnx.Rngs(0))
  x = _images()

  def f(m, x):
    tokens = m.encode(x).tokens
    logits = m.decode_logits(tokens)
    ref = vqgan.codes_to_pixels(m.pixel_decoder, m.pixel_codebook.get_value(),
                                jax.nn.softmax(logits, -1))
    return logits, m.decode(tokens), ref

  logits, img, ref = _run(m, f, x)
  assert logits.shape == (2, 4, 4, 12)
  assert img.shape == (2, 32, 32, 3)
  np.testing.assert_allclose(img, ref, rtol=1e-5, atol=1e-6)
  assert m.decoder.ffn.kernel.shape == (16, 32) and m.decoder.ffn_out.kernel.shape == (32, 12)
  with pytest.raises(ValueError, match="patch_size"):
    titok.make_model(dict(TINY, **dict(PROXY, pixel_ch_mult=(1, 2))), rngs=nnx.Rngs(0))


def test_grad_flows_through_encode_quantize_decode():
  m = titok.make_model(TINY, rngs=nnx.Rngs(0))
  g, s = nnx.split(m)
  x = _images()

  @jax.jit
  def grads(s):
    def loss(s):
      tr = nnx.merge(g, s).train_forward(x, rng=jax.random.key(0))
      return jnp.mean((tr.recon - x)**2) + sum(tr.losses.values())
    return jax.grad(loss)(s)

  gr = grads(s)
  norm = lambda t: float(sum(jnp.sum(jnp.abs(l)) for l in jax.tree.leaves(t)))
  assert norm(gr["encoder"]["transformer"]) > 0  # straight-through reaches the encoder
  assert norm(gr["latent_tokens"]) > 0
  assert norm(gr["codebook"]) > 0  # codebook loss trains the codebook by gradient
  assert norm(gr["decoder"]) > 0


def test_bad_fields_and_tokens_raise():
  with pytest.raises(ValueError, match="quantizer"):
    titok.make_model(dict(TINY, quantizer="pq"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="encoder_size"):
    titok.make_model(dict(TINY, encoder_width=None), rngs=nnx.Rngs(0))
  m = titok.make_model(TINY, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="tokens"):
    m.decode(jnp.zeros((2, 7), jnp.int32))
  with pytest.raises(TypeError, match="integer"):
    m.decode(jnp.zeros((2, 6), jnp.float32))
  with pytest.raises(ValueError, match="num_tokens"):
    m.encode(_images(), num_tokens=7)


# ---- parameter counts of the released configs (section 1.2 / 1.7 of the reference notes)

def _abstract(**cfg):
  return nnx.state(nnx.eval_shape(lambda: titok.make_model(cfg, rngs=nnx.Rngs(0))))


LEGACY = dict(legacy_reshape=True, decoder_head="proxy_codes", token_size=12, codebook_size=4096)


def test_param_count_titok_s128():
  s = _abstract(encoder_size="S", decoder_size="S", num_latent_tokens=128, **LEGACY)
  assert abs(_count(s["encoder"]) / 25.8e6 - 1) < 0.01
  assert abs(_count(s["decoder"]) / 27.0e6 - 1) < 0.01
  assert abs(_count(s["pixel_decoder"]) / 30.5e6 - 1) < 0.01
  assert _count(s) == 83_674_639  # the reference state dict, tensor for tensor


@pytest.mark.slow
@pytest.mark.parametrize("size,k,total", [("B", 64, 204.8e6), ("L", 32, 641.1e6)])
def test_param_count_titok_b64_l32(size, k, total):
  s = _abstract(encoder_size=size, decoder_size=size, num_latent_tokens=k, **LEGACY)
  assert abs(_count(s) / total - 1) < 0.01


def test_onedpiece_pow2_tail_drop_draws_only_powers_of_two():
  cfg = dict(TINY, name="onedpiece", num_latent_tokens=8, tail_drop_mode="pow2")
  m = titok.make_model(cfg, rngs=nnx.Rngs(0))
  assert m.tail_drop and m.tail_drop_mode == "pow2"
  g, s = nnx.split(m)
  x = _images()
  kept = jax.jit(jax.vmap(lambda r: nnx.merge(g, s).train_forward(x, rng=r).metrics["kept_tokens"]))(
      jax.random.split(jax.random.key(0), 64))
  values = set(np.asarray(kept).astype(int).tolist())
  # All four lengths {1, 2, 4, 8} appear in 64 draws (each is missed with probability (3/4)^64).
  assert values == {1, 2, 4, 8}


def test_tail_drop_mode_errors():
  with pytest.raises(ValueError, match="tail_drop_mode must be one of"):
    titok.make_model(dict(TINY, name="onedpiece", tail_drop_mode="geometric"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="power of two, got 6"):
    titok.make_model(dict(TINY, name="onedpiece", tail_drop_mode="pow2"), rngs=nnx.Rngs(0))


PERTURB = {"alpha": 1.0, "beta": 0.5, "delta": 3}
# (config overrides, train_forward keywords): every training path of a One-D-Piece.
PATHS = {
    "pixels": ({}, {}),
    "proxy": (PROXY, {"target": "proxy_logits"}),
    "perturbed_vq": ({}, {"perturb": PERTURB}),
    "perturbed_fsq": ({"quantizer": "fsq", "fsq_levels": (5, 5, 3, 3)}, {"perturb": PERTURB}),
}


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("mode", ["pow2", "uniform"])
def test_every_training_path_draws_its_kept_length_in_the_tail_drop_mode(path, mode):
  """pow2 draws only {1, 2, 4, 8} and uniform covers 1..8, on the pixel, proxy and perturbed paths."""
  overrides, kw = PATHS[path]
  cfg = dict(TINY, name="onedpiece", num_latent_tokens=8, tail_drop_mode=mode, **overrides)
  g, s = nnx.split(titok.make_model(cfg, rngs=nnx.Rngs(0)))
  x = _images()

  def kept(r):
    out = nnx.merge(g, s).train_forward(x, rng=r, step=jnp.int32(0), **kw)
    assert (out.logits is not None) == (path == "proxy") and (out.recon is None) == (path == "proxy")
    if path.startswith("perturbed"):
      assert "perturb/change_rate" in out.metrics
    return out.metrics["kept_tokens"]

  values = np.asarray(jax.jit(jax.vmap(kept))(jax.random.split(jax.random.key(0), 96)))
  values = set(values.astype(int).tolist())
  # 96 draws miss one of 4 lengths with probability < 4 (3/4)^96 and one of 8 with < 8 (7/8)^96.
  assert values == ({1, 2, 4, 8} if mode == "pow2" else set(range(1, 9)))


def test_proxy_logits_are_the_decoded_kept_prefix():
  """target "proxy_logits": the logits of decode_codes(encode(x).codes) with the drawn kept length,
  flattened row-major to [B, g*g, P]; the VQ losses are encode's."""
  m = titok.make_model(dict(TINY, name="onedpiece", **PROXY), rngs=nnx.Rngs(0))

  def f(m, x, r):
    out = m.train_forward(x, rng=r, target="proxy_logits")
    keep = out.metrics["kept_tokens"].astype(jnp.int32)
    ref = m.decode_codes(m.encode(x).codes, num_tokens=keep, logits=True)
    return out, ref, m.encode(x).losses

  out, ref, losses = _run(m, f, _images(), jax.random.key(2))
  assert out.recon is None and out.logits.shape == (2, 16, 12)
  np.testing.assert_array_equal(out.logits, ref.reshape(2, 16, 12))
  for k, v in losses.items():
    np.testing.assert_array_equal(out.losses[k], v)


def test_train_forward_refuses_what_the_model_cannot_do():
  x = _images()
  with pytest.raises(ValueError, match="proxy-code head"):
    titok.make_model(dict(TINY, name="titok"), rngs=nnx.Rngs(0)).train_forward(
        x, rng=jax.random.key(0), target="proxy_logits")
  with pytest.raises(ValueError, match="target must be one of"):
    titok.make_model(dict(TINY, name="titok"), rngs=nnx.Rngs(0)).train_forward(
        x, rng=jax.random.key(0), target="codes")
  with pytest.raises(ValueError, match="discrete tokens"):
    titok.make_model(dict(TINY, name="vae", token_size=4), rngs=nnx.Rngs(0)).train_forward(
        x, rng=jax.random.key(0), perturb=PERTURB)
