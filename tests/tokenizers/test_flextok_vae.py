"""Tests of FlexTok's SD-style VAE: shapes, KL/posterior formulas, block invariants, grads, sharding, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxtok import sharding
from jaxtok.tokenizers import flextok_vae as vae_lib
from jaxtok.tokenizers import vae as gaussian  # the Gaussian posterior of both VAEs


def _vae(**kw):
  cfg = dict(channels=(8, 16), latent_channels=4, layers_per_block=1, norm_groups=4)
  cfg.update(kw)
  return vae_lib.FlexTokVAE(**cfg, rngs=nnx.Rngs(0))


def _jit(module, method):
  """module.method as one jitted function (eager dispatch op by op is slow on a busy CPU)."""
  graphdef, state = nnx.split(module)
  f = jax.jit(lambda s, *a: getattr(nnx.merge(graphdef, s), method)(*a))
  return lambda *a: f(state, *a)


def _images(b=2, s=16, seed=0):
  return jax.random.uniform(jax.random.key(seed), (b, s, s, 3), minval=-1.0, maxval=1.0)


def _abstract(method, make, *args):
  """Output shapes of make().method(*args) without allocating or running anything."""
  graphdef, state = nnx.split(nnx.eval_shape(make))
  return jax.eval_shape(lambda s, *a: getattr(nnx.merge(graphdef, s), method)(*a), state, *args)


def test_shapes_dtypes_and_factor():
  make = lambda: _vae(channels=(8, 8, 16))
  assert nnx.eval_shape(make).downsample_factor == 4
  mean, logvar = _abstract("encode", make, _images(s=16))
  assert mean.shape == logvar.shape == (2, 4, 4, 4)
  assert mean.dtype == logvar.dtype == jnp.float32
  out = _abstract("decode", make, jnp.zeros((2, 4, 4, 4)))
  assert out.shape == (2, 16, 16, 3) and out.dtype == jnp.float32
  # bf16 compute still returns float32 moments.
  m16, _ = _abstract("encode", lambda: _vae(dtype=jnp.bfloat16, mid_attention=False),
                     _images().astype(jnp.bfloat16))
  assert m16.dtype == jnp.float32


def test_resnet_block_is_identity_when_last_conv_is_zero():
  block = vae_lib.ResnetBlock(8, 8, 4, dtype=jnp.float32, rngs=nnx.Rngs(1))
  block.conv2.kernel.set_value(jnp.zeros_like(block.conv2.kernel.get_value()))
  x = _images(s=6)[..., :1].repeat(8, axis=-1)
  np.testing.assert_allclose(_jit(block, "__call__")(x), x, atol=1e-6)
  # With channels changing the 1x1 shortcut carries the input.
  block2 = vae_lib.ResnetBlock(8, 16, 4, dtype=jnp.float32, rngs=nnx.Rngs(1))
  block2.conv2.kernel.set_value(jnp.zeros_like(block2.conv2.kernel.get_value()))
  np.testing.assert_allclose(_jit(block2, "__call__")(x), _jit(block2.shortcut, "__call__")(x),
                             atol=1e-6)


def test_spatial_attention_commutes_with_spatial_transpose():
  attn = vae_lib.SpatialAttention(8, 4, dtype=jnp.float32, rngs=nnx.Rngs(2))
  f = _jit(attn, "__call__")
  x = jax.random.normal(jax.random.key(4), (2, 3, 5, 8))
  np.testing.assert_allclose(f(x.transpose(0, 2, 1, 3)), f(x).transpose(0, 2, 1, 3), atol=1e-5)
  # It mixes positions: changing one position changes the output elsewhere.
  y = x.at[:, 0, 0].add(3.0)
  assert float(jnp.abs(f(y)[:, 2, 4] - f(x)[:, 2, 4]).max()) > 1e-4


def test_downsample_is_asymmetric_like_diffusers():
  # diffusers pads (0, 1) on the right/bottom only: output pixel (0, 0) sees inputs 0..2 only, so an
  # input change at row/col 0 reaches it while the last row/col reaches only the last output.
  vae = _vae(mid_attention=False)
  conv = _jit(vae.down[1], "__call__")
  x = jnp.zeros((1, 8, 8, 8))
  d_last = conv(x.at[:, 7, 7].set(1.0)) - conv(x)
  assert float(jnp.abs(d_last[:, :3, :3]).max()) == 0.0
  assert float(jnp.abs(d_last[:, 3, 3]).max()) > 0.0


def test_mid_attention_option_removes_parameters():
  with_attn = nnx.state(_vae(), nnx.Param)
  without = nnx.state(_vae(mid_attention=False), nnx.Param)
  count = lambda s: sum(x.size for x in jax.tree.leaves(s))
  # Two mid blocks (encoder, decoder) at 16 channels: GroupNorm (2c) + q, k, v, out (c*c + c each),
  # q, k, v fused in one nn.Attention.
  assert count(with_attn) - count(without) == 2 * (2 * 16 + 4 * (16 * 16 + 16))


def test_jit_and_grad():
  vae = _vae()
  graphdef, state = nnx.split(vae)
  x = _images()

  def loss(state, x):
    m = nnx.merge(graphdef, state)
    mean, logvar = m.encode(x)
    z = gaussian.sample(mean, logvar, jax.random.key(0))
    return jnp.mean(jnp.square(m.decode(z) - x)) + 1e-3 * jnp.mean(gaussian.kl_divergence(mean, logvar))

  val, grads = jax.jit(jax.value_and_grad(loss))(state, x)
  np.testing.assert_allclose(val, jax.jit(loss)(state, x), rtol=1e-5)
  g = nnx.State(grads) if not isinstance(grads, nnx.State) else grads
  assert float(jnp.abs(g["enc_in"]["kernel"].get_value()).sum()) > 0
  assert float(jnp.abs(g["dec_out"]["kernel"].get_value()).sum()) > 0
  assert all(bool(jnp.all(jnp.isfinite(l))) for l in jax.tree.leaves(grads))


def test_sharded_batch_equals_unsharded():
  vae = _vae()
  graphdef, state = nnx.split(vae)
  x = _images(b=8)
  f = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode(x)[0])
  mesh = sharding.make_mesh()
  xs = jax.device_put(x, NamedSharding(mesh, P("data")))
  np.testing.assert_allclose(f(state, xs), f(state, x), atol=1e-5)


def test_bad_inputs_raise():
  vae = _vae()
  with pytest.raises(ValueError, match="images"):
    vae.encode(jnp.zeros((1, 16, 16, 4)))
  with pytest.raises(ValueError, match="divisible"):
    vae.encode(jnp.zeros((1, 15, 16, 3)))
  with pytest.raises(TypeError, match="images"):
    vae.encode(jnp.zeros((1, 16, 16, 3), jnp.int32))
  with pytest.raises(ValueError, match="latents"):
    vae.decode(jnp.zeros((1, 4, 4, 3)))
  with pytest.raises(ValueError, match="norm_groups"):
    _vae(channels=(6, 16))
  with pytest.raises(ValueError, match="channels"):
    _vae(channels=())
