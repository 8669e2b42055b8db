"""The released Instella-T2I autoencoder as a tokenizer (`tokenizers.instella_bae`): its RoPE angles,
ids, resize blocks by hand, the tokenizer contract, a tiny config whose loss falls, and bad input.
(Parity with the release's own classes: tests/convert/test_instella.py.)"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxtok.configs import instella
from jaxtok.nn import rope
from jaxtok.tokenizers import api, instella_bae as B


def test_angle_rope_by_hand_and_equal_to_1d_rope_for_duplicated_angles():
  a = 0.7
  x = jnp.asarray([1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 1, 4)
  out = rope.rope_angles(x, jnp.asarray([[a, 0.0, 0.0, 0.0]]))
  # Channel 0 pairs with channel 2 (half split): out[0] = cos a, out[2] = x[2] cos 0 + x[0] sin 0.
  np.testing.assert_allclose(np.asarray(out).ravel(), [np.cos(a), 0.0, 0.0, 0.0], atol=1e-7)
  out = rope.rope_angles(x, jnp.asarray([[0.0, 0.0, a, 0.0]]))
  np.testing.assert_allclose(np.asarray(out).ravel(), [1.0, 0.0, np.sin(a), 0.0], atol=1e-7)
  # angles [p w, p w] are 1D RoPE.
  xs = jax.random.normal(jax.random.key(0), (2, 5, 3, 8))
  pos = jnp.arange(5.0)
  w = 10000.0 ** (-jnp.arange(4) * 2.0 / 8)
  ang = jnp.concatenate([pos[:, None] * w, pos[:, None] * w], axis=-1)
  np.testing.assert_allclose(rope.rope_angles(xs, ang), rope.rope_1d(xs, pos), atol=1e-5)
  with pytest.raises(ValueError, match="angles"):
    rope.rope_angles(xs, ang[:, :6])


def test_flux_angles_by_hand():
  # axes (2, 4, 2): axis 0 freq [1]; axis 1 freqs [1, 10000^-0.5 = 0.01]; axis 2 freq [1];
  # each repeated twice (channel-interleaved).
  out = rope.flux_angles(jnp.asarray([[1.0, 2.0, 3.0]]), (2, 4, 2))
  np.testing.assert_allclose(np.asarray(out), [[1, 1, 2, 2, 0.02, 0.02, 3, 3]], rtol=1e-6)
  with pytest.raises(ValueError, match="ids must be"):
    rope.flux_angles(jnp.zeros((2, 2)), (2, 4, 2))


def test_token_ids_by_hand():
  ids = np.asarray(B.token_ids(2, 2, 3))
  np.testing.assert_array_equal(ids, [[0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 1], [0, 0, 2],
                                      [0, 1, 0], [0, 1, 1], [0, 1, 2]])
  # Scale 5: rows y / 1 * 4 -> {0, 4}, columns x / 2 * 4 -> {0, 2, 4}.
  ids = np.asarray(B.token_ids(1, 2, 3, 5.0))
  np.testing.assert_allclose(ids[1:], [[0, 0, 0], [0, 0, 2], [0, 0, 4], [0, 4, 0], [0, 4, 2],
                                       [0, 4, 4]])
  with pytest.raises(ValueError, match="2 x 2"):
    B.token_ids(1, 1, 3, 5.0)


def test_pixel_shuffle_follows_torch_channel_order():
  x = jnp.broadcast_to(jnp.arange(8.0), (1, 1, 1, 8))  # channel k holds k; C = 2
  out = np.asarray(B.pixel_shuffle2(x))
  assert out.shape == (1, 2, 2, 2)
  for i in range(2):
    for j in range(2):
      for c in range(2):
        assert out[0, i, j, c] == 4 * c + 2 * i + j


def test_resize_blocks_are_strided_conv_plus_pool_and_conv_shuffle_plus_nearest():
  down = B.DownBlock(3, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 4, 6, 3))
  k = down.conv.kernel.get_value()
  strided = jax.lax.conv_general_dilated(x, k, (2, 2), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
  pooled = x.reshape(2, 2, 2, 3, 2, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(down(x), strided + down.conv.bias.get_value() + pooled, atol=1e-5)
  up = B.UpBlock(3, rngs=nnx.Rngs(0))
  y = np.asarray(up(x))
  conv = np.asarray(up.conv(x))  # [2, 4, 6, 12]
  # Output (2y + i, 2x + j, c) = conv channel 4c + 2i + j at (y, x) + x at (y, x).
  for i in range(2):
    for j in range(2):
      np.testing.assert_allclose(y[:, i::2, j::2, :], conv[..., [4 * c + 2 * i + j for c in range(3)]]
                                 + np.asarray(x), atol=1e-5)


@pytest.fixture(scope="module")
def tiny():
  config = instella.get_config("release,tiny")
  tok = api.build(config.model)
  return config, tok, tok.init(jax.random.key(0))


def test_release_configs_and_tokenizer_contract(tiny):
  config, tok, params = tiny
  full = instella.get_config("release")
  assert full.model.name == "instella_bae" and full.model.rope_scale == 64.0
  assert (full.model.num_latent_tokens, full.model.bits, full.data.image_size) == (128, 64, 512)
  with pytest.raises(ValueError, match="takes only 'tiny'"):
    instella.get_config("release,bits=8")
  assert tok.max_tokens == 8 and tok.vocab_size == 2 and tok.image_size == 16
  images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
  out = tok.encode(params, images)
  tokens = np.asarray(out.tokens)
  assert tokens.shape == (2, 8, 32) and tokens.dtype == np.int32 and set(np.unique(tokens)) <= {0, 1}
  rec = tok.decode(params, out.tokens)
  assert rec.shape == (2, 16, 16, 3) and rec.dtype == jnp.float32
  np.testing.assert_allclose(tok.reconstruct(params, images), rec, atol=1e-6)
  # The bits are the thresholded logits (eval), and decode embeds exactly those bits.
  logits = np.asarray(jax.jit(lambda p, x: tok.model(p).encode_logits(x))(params, images))
  np.testing.assert_array_equal(tokens, (logits > 0).astype(np.int32))


@pytest.mark.slow
def test_tiny_release_autoencoder_learns_to_reconstruct(tiny):
  _, tok, params = tiny
  model = tok.model(params)
  images = jax.random.uniform(jax.random.key(2), (4, 16, 16, 3))
  opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, rng):
    def loss_fn(m):
      out = m.train_forward(images, rng=rng)
      return jnp.mean(jnp.square(out.recon - images)) + out.losses["binary_aux"]
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss, grads

  losses = []
  for i in range(30):
    loss, grads = step(model, opt, jax.random.key(10 + i))
    losses.append(float(loss))
    if i == 0:  # the straight-through bits pass gradient to the encoder
      assert float(jnp.abs(grads.patch_embedder.kernel.get_value()).max()) > 0
  assert losses[-1] < 0.5 * losses[0], losses


def test_bad_inputs_are_refused_by_name(tiny):
  config, tok, params = tiny
  cfg = config.model.to_dict()
  with pytest.raises(ValueError, match="unknown instella_bae config key"):
    api.build(dict(cfg, codebook_size=64))
  with pytest.raises(ValueError, match="equally many"):
    api.build(dict(cfg, upsample_idx=()))
  with pytest.raises(ValueError, match="axes_dim must sum to the head dim 16"):
    api.build(dict(cfg, axes_dim=(4, 4, 4)))
  with pytest.raises(ValueError, match=r"downsample_idx must hold distinct block indices in \[0, 2\)"):
    api.build(dict(cfg, downsample_idx=(2,), upsample_idx=(0,)))
  with pytest.raises(ValueError, match="neither remat nor scan_layers"):
    api.build(dict(cfg, scan_layers=True))
  with pytest.raises(ValueError, match="divisible by patch_size"):
    api.build(dict(cfg, image_size=20))
  model = tok.model(params)
  images = jnp.zeros((1, 16, 16, 3))
  with pytest.raises(ValueError, match="no nested prefixes"):
    model.encode(images, num_tokens=4)
  with pytest.raises(ValueError, match="tokens must have shape"):
    model.decode(jnp.zeros((1, 8), jnp.int32))
  with pytest.raises(ValueError, match="must hold all 8 tokens"):
    model.decode(jnp.zeros((1, 4, 32), jnp.int32))
  with pytest.raises(ValueError, match="needs a proxy-code head.*Instella autoencoder has none"):
    model.train_forward(images, rng=jax.random.key(0), target="proxy_logits")
