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
    return (enc, m.decode(enc.tokens), m.decode_codes(enc.codes), m.codes_to_pixels(onehot),
            m.train_forward(x, rng=jax.random.key(0)))

  # These paths feed the decoder bitwise-equal codes (a gather, the straight-through codes, a
  # one-hot weighted sum with exact 0/1 weights), so only the decoder's own rounding can differ.
  enc, img, img_codes, img_onehot, tr = f(s)
  assert enc.tokens.shape == (2, 16) and enc.tokens.dtype == jnp.int32
  assert int(enc.tokens.max()) < 10 and enc.codes.shape == (2, 16, 4)
  assert img.shape == (2, 16, 16, 3) and img.dtype == jnp.float32
  np.testing.assert_allclose(img_codes, img, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(img_onehot, img, rtol=1e-5, atol=1e-6)
  assert set(tr.losses) >= {"commitment", "codebook"}
  np.testing.assert_allclose(tr.recon, img, rtol=1e-5, atol=1e-6)
  # Tokens are the nearest codes (Euclidean) of the encoder output.
  z = jax.jit(lambda s: nnx.merge(g, s).encoder(x))(s).reshape(2, 16, 4)
  d = jnp.sum((z[:, :, None] - m.codebook.get_value()[None, None])**2, -1)
  np.testing.assert_array_equal(enc.tokens, jnp.argmin(d, -1))


def test_vqgan_soft_codes_decode_the_convex_combination():
  """Soft codes decode sum_p probs_p c_p, checked so that no rounding luck is involved.

  Comparing codes_to_pixels(uniform 0.1) with decoder(mean code) in float32 (as this test once did)
  is not sound: the two decoder inputs differ by summation order (~2e-9 here) and the decoder
  amplifies input differences by its Jacobian's infinity norm (~900 for this tiny random model),
  so outputs differed by ~2e-6 and failed atol 1e-6 on some runs. Instead:
  1. with weights 1/8 on 8 codes whose entries are multiples of 2**-16 (|c| < 0.1, so <= 13
     significant bits), every product and partial sum is exact in float32 in any order: both
     decoder inputs are bitwise equal and the outputs may differ only by the decoder's own
     rounding (the tolerance of the identical-input comparisons above);
  2. with arbitrary weights the decoder input is checked against a float64 reference within the
     standard bound for an n-term float32 dot product, |fl(sum) - sum| <= gamma_n sum |p_i c_i|
     (gamma_n = n u / (1 - n u), u = 2**-24), plus u sum |p_i c_i| for rounding 0.1 to float32.
  """
  m = vqgan.make_model(CFG, rngs=nnx.Rngs(0))
  dyadic = jnp.round(m.codebook.get_value() * 2.0**16) / 2.0**16
  m.codebook.set_value(dyadic)
  g, s = nnx.split(m)
  probs = jnp.zeros((2, 4, 4, 10)).at[..., :8].set(0.125)

  @jax.jit
  def f(s):
    m = nnx.merge(g, s)
    mean8 = jnp.mean(m.codebook.get_value()[:8], 0)
    z_soft = jnp.einsum("bhwp,pz->bhwz", probs, m.codebook.get_value())
    return m.codes_to_pixels(probs), m.decoder(jnp.broadcast_to(mean8, (2, 4, 4, 4))), z_soft, mean8

  soft, direct, z_soft, mean8 = f(s)
  np.testing.assert_array_equal(z_soft, np.broadcast_to(mean8, z_soft.shape))  # exact by (1)
  np.testing.assert_allclose(soft, direct, rtol=1e-5, atol=1e-6)

  # (2): the soft-code input for uniform weights over all 10 codes, against float64.
  book = np.asarray(m.codebook.get_value(), np.float64)
  uniform = jnp.full((1, 1, 1, 10), 0.1)
  z = np.asarray(vqgan.codes_to_pixels(lambda z: z, m.codebook.get_value(), uniform), np.float64)
  u, n = 2.0**-24, 10
  bound = (n * u / (1 - n * u) + u) * np.sum(0.1 * np.abs(book), 0)
  assert np.all(np.abs(z[0, 0, 0] - book.mean(0)) <= bound)


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
