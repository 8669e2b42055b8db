"""The continuous (diagonal Gaussian) 1D tokenizer: closed-form KL, clamping, sampling, the model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.tokenizers import vae

CFG = dict(name="vae", image_size=32, patch_size=8, encoder_width=16, encoder_depth=1,
           encoder_heads=2, decoder_width=16, decoder_depth=1, decoder_heads=2,
           num_latent_tokens=5, token_size=3, kl_weight=0.5)


def test_split_moments_clamps_logvar():
  m = jnp.array([[1.0, -2.0, 50.0, -50.0]])
  mean, logvar = vae.split_moments(m)
  np.testing.assert_array_equal(mean, [[1.0, -2.0]])
  np.testing.assert_array_equal(logvar, [[20.0, -30.0]])
  with pytest.raises(ValueError, match="even"):
    vae.split_moments(jnp.zeros((2, 3)))


def test_kl_closed_form():
  rs = np.random.RandomState(0)
  mean, logvar = rs.randn(2, 4, 3), rs.randn(2, 4, 3)
  ref = 0.5 * (mean**2 + np.exp(logvar) - 1 - logvar).reshape(2, -1).sum(-1)
  np.testing.assert_allclose(vae.kl_divergence(jnp.asarray(mean), jnp.asarray(logvar)), ref,
                             rtol=1e-5)
  np.testing.assert_allclose(vae.kl_divergence(jnp.zeros((2, 3)), jnp.zeros((2, 3))), 0.0)


def test_sample_is_reparameterised():
  mean, logvar = jnp.full((1000,), 2.0), jnp.full((1000,), np.log(0.25))
  rng = jax.random.key(0)
  s = vae.sample(mean, logvar, rng)
  np.testing.assert_allclose(s, 2.0 + 0.5 * jax.random.normal(rng, (1000,)), rtol=1e-6)
  g = jax.grad(lambda m: vae.sample(m, logvar, rng).sum())(mean)
  np.testing.assert_allclose(g, 1.0)


@pytest.fixture(scope="module")
def model():
  return vae.make_model(CFG, rngs=nnx.Rngs(0))


def test_vae_model_encode_decode(model):
  m = model
  assert m.quantizer == "vae" and m.encoder.conv_out.kernel.shape == (16, 6)
  g, s = nnx.split(m)
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))

  @jax.jit
  def f(s, rng):
    m = nnx.merge(g, s)
    z = m.encoder(x, m.latent_tokens.get_value())
    enc = m.encode(x)
    tr = m.train_forward(x, rng=rng)
    return z, enc, tr, m.decode(enc.tokens), m.decode(enc.tokens[:, :2])

  z, enc, tr, img, img2 = f(s, jax.random.key(1))
  assert enc.tokens.shape == (2, 5, 3) and enc.tokens.dtype == jnp.float32
  np.testing.assert_allclose(enc.tokens, z[..., :3], rtol=1e-6)  # inference: the mode
  np.testing.assert_array_equal(enc.codes, enc.tokens)
  mean, logvar = vae.split_moments(z)
  kl = float(jnp.mean(vae.kl_divergence(mean, logvar)))
  np.testing.assert_allclose(enc.metrics["kl"], kl, rtol=1e-5)
  np.testing.assert_allclose(enc.losses["kl"], 0.5 * kl, rtol=1e-5)
  assert img.shape == img2.shape == (2, 32, 32, 3)
  # Training samples: the recon differs from decoding the mode.
  assert tr.recon.shape == (2, 32, 32, 3) and float(jnp.abs(tr.recon - img).max()) > 0
  with pytest.raises(TypeError, match="float"):
    m.decode(jnp.zeros((2, 5, 3), jnp.int32))


def test_vae_sampling_needs_rng_and_varies():
  m = vae.make_model(dict(CFG, vae_inference="sample"), rngs=nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3))
  with pytest.raises(ValueError, match="rng"):
    m.encode(x)
  g, s = nnx.split(m)
  f = jax.jit(lambda s, r: nnx.merge(g, s).encode(x, rng=r).tokens)
  a, b = f(s, jax.random.key(1)), f(s, jax.random.key(2))
  assert float(jnp.abs(a - b).max()) > 0
  np.testing.assert_array_equal(a, f(s, jax.random.key(1)))


def test_gaussian_posterior_on_image_latents():
  """The FlexTok VAE's posterior is this one (moved from tests/tokenizers/test_flextok_vae.py)."""
  shape = (2, 3, 3, 4)
  n = 3 * 3 * 4
  # mean 1, var 1: 0.5 * (1 + 1 - 1 - 0) per element.
  np.testing.assert_allclose(vae.kl_divergence(jnp.ones(shape), jnp.zeros(shape)), [0.5 * n] * 2,
                             rtol=1e-6)
  # mean 0, var 2: 0.5 * (2 - 1 - log 2) per element.
  lv = jnp.full(shape, np.log(2.0))
  np.testing.assert_allclose(vae.kl_divergence(jnp.zeros(shape), lv),
                             [0.5 * (1 - np.log(2.0)) * n] * 2, rtol=1e-5)
  # logvar clipped at 20: exp(20) not exp(50), in the KL and in the sample.
  big = vae.kl_divergence(jnp.zeros((1, 1, 1, 1)), jnp.full((1, 1, 1, 1), 50.0))
  np.testing.assert_allclose(big, [0.5 * (np.exp(20.0) - 1 - 20)], rtol=1e-5)
  rng = jax.random.key(3)
  mean = jnp.arange(8.0).reshape(1, 2, 2, 2)
  got = vae.sample(mean, jnp.full(mean.shape, np.log(4.0)), rng)
  np.testing.assert_allclose(got, mean + 2.0 * jax.random.normal(rng, mean.shape), rtol=1e-6)
  got = vae.sample(mean, jnp.full(mean.shape, 50.0), rng)
  np.testing.assert_allclose(got, mean + np.exp(10.0) * jax.random.normal(rng, mean.shape),
                             rtol=1e-5)
