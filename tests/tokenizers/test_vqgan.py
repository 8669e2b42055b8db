"""MaskGIT VQGAN tokenizer: shapes, token/code consistency, soft-code decoding, released size."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.tokenizers import build, vqgan

CFG = dict(name="vqgan", image_size=16, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4,
           codebook_size=10, num_groups=4)


def test_vqgan_encode_decode_and_soft_codes():
  m = vqgan.make_model(CFG, rngs=nnx.Rngs(0))
  assert m.num_latent_tokens == 16
  g, s = nnx.split(m)
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))

  @jax.jit
  def f(s):
    m = nnx.merge(g, s)
    enc = m.encode(x)
    onehot = jax.nn.one_hot(enc.tokens.reshape(2, 4, 4), 10)
    uniform = jnp.full((2, 4, 4, 10), 0.1)
    mean_code = jnp.mean(m.codebook.get_value(), 0)
    return (enc, m.decode(enc.tokens), m.decode_codes(enc.codes), m.codes_to_pixels(onehot),
            m.codes_to_pixels(uniform), m.decoder(jnp.broadcast_to(mean_code, (2, 4, 4, 4))),
            m.train_forward(x, rng=jax.random.key(0)))

  enc, img, img_codes, img_onehot, img_uniform, img_mean, tr = f(s)
  assert enc.tokens.shape == (2, 16) and enc.tokens.dtype == jnp.int32
  assert int(enc.tokens.max()) < 10 and enc.codes.shape == (2, 16, 4)
  assert img.shape == (2, 16, 16, 3) and img.dtype == jnp.float32
  np.testing.assert_allclose(img_codes, img, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(img_onehot, img, rtol=1e-5, atol=1e-6)
  # Soft codes decode the convex combination of code vectors.
  np.testing.assert_allclose(img_uniform, img_mean, rtol=1e-5, atol=1e-6)
  assert set(tr.losses) >= {"commitment", "codebook"}
  np.testing.assert_allclose(tr.recon, img, rtol=1e-5, atol=1e-6)
  # Tokens are the nearest codes (Euclidean) of the encoder output.
  z = jax.jit(lambda s: nnx.merge(g, s).encoder(x))(s).reshape(2, 16, 4)
  d = jnp.sum((z[:, :, None] - m.codebook.get_value()[None, None])**2, -1)
  np.testing.assert_array_equal(enc.tokens, jnp.argmin(d, -1))


def test_vqgan_validation_and_api():
  m = vqgan.make_model(CFG, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="num_tokens"):
    m.encode(jnp.zeros((1, 16, 16, 3)), num_tokens=4)
  with pytest.raises(ValueError, match="tokens"):
    m.decode(jnp.zeros((1, 15), jnp.int32))
  with pytest.raises(ValueError, match="divisible"):
    vqgan.make_model(dict(CFG, image_size=18), rngs=nnx.Rngs(0))
  tok = build(CFG)
  p = tok.init(jax.random.key(0))
  out = tok.encode(p, jnp.full((1, 16, 16, 3), 0.5))
  assert out.tokens.shape == (1, 16) and tok.max_tokens == 16 and tok.image_size == 16


def test_released_vqgan_size():
  m = nnx.eval_shape(lambda: vqgan.make_model({}, rngs=nnx.Rngs(0)))
  count = lambda t: sum(int(np.prod(l.shape)) for l in jax.tree.leaves(t))
  s = nnx.state(m)
  # TiTok-S-128's pixel decoder (the same MaskGIT decoder) has 30,478,339 parameters.
  assert count(s["decoder"]) == 30_478_339
  assert s["codebook"].get_value().shape == (1024, 256) and m.num_latent_tokens == 256
