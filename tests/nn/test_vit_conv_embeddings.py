"""Patch embedding = strided conv, patchify round trip, sin-cos values, VQGAN conv blocks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxtok.sharding  # noqa: F401
from jaxtok.nn import conv, embeddings, vit


def test_patch_embed_equals_strided_conv():
  pe = vit.PatchEmbed(4, 6, rngs=nnx.Rngs(0))
  pe.bias.set_value(jnp.arange(6.0))
  x = jax.random.uniform(jax.random.key(0), (2, 8, 12, 3))
  kernel = pe.kernel.get_value().reshape(4, 4, 3, 6)  # (p_y, p_x, c, W) = HWIO
  ref = jax.lax.conv_general_dilated(x, kernel, (4, 4), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + jnp.arange(6.0)
  np.testing.assert_allclose(pe(x), ref.reshape(2, 6, 6), rtol=1e-5, atol=1e-5)


def test_patchify_round_trip_and_order():
  x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
  p = vit.patchify(x, 2)
  assert p.shape == (2, 6, 12)
  # Second patch of the first row: rows 0-1, columns 2-3, flattened (p_y, p_x, c).
  np.testing.assert_array_equal(p[0, 1], np.asarray(x[0, 0:2, 2:4]).reshape(-1))
  np.testing.assert_array_equal(vit.unpatchify(p, 2, 2, 3), x)
  with pytest.raises(ValueError, match="divisible"):
    vit.patchify(x, 4)


def test_vit_sizes():
  assert vit.vit_size("small") == (512, 8, 8) and vit.vit_size("L") == (1024, 24, 16)
  with pytest.raises(ValueError, match="ViT size"):
    vit.vit_size("XL")


def test_sincos_values():
  e = embeddings.sincos_1d(np.array([0.0, 1.0]), 4)
  np.testing.assert_allclose(e[0], [0, 0, 1, 1], atol=1e-7)
  np.testing.assert_allclose(e[1], [np.sin(1), np.sin(0.01), np.cos(1), np.cos(0.01)], rtol=1e-6)
  g = embeddings.sincos_2d(2, 3, 8)
  assert g.shape == (6, 8)
  # Row-major (y, x): index 4 is y=1, x=1; first half codes y, second half codes x.
  np.testing.assert_allclose(g[4, :4], embeddings.sincos_1d(np.array(1.0), 4), rtol=1e-6)
  np.testing.assert_allclose(g[5, 4:], embeddings.sincos_1d(np.array(2.0), 4), rtol=1e-6)
  with pytest.raises(ValueError, match="multiple of 4"):
    embeddings.sincos_2d(2, 2, 6)


def test_learned_embedding_and_inits():
  emb = embeddings.LearnedEmbedding(1000, 64, rngs=nnx.Rngs(0))
  assert emb(3).shape == (3, 64)
  np.testing.assert_allclose(float(jnp.std(emb())), 64**-0.5, rtol=0.05)
  with pytest.raises(ValueError, match="length"):
    emb(1001)
  t = embeddings.trunc_normal(1.0, -0.5, 0.5)(jax.random.key(0), (10000,))
  assert float(t.min()) >= -0.5 and float(t.max()) <= 0.5
  u = embeddings.xavier_uniform_fused(8)(jax.random.key(0), (10000,))
  assert float(jnp.abs(u).max()) <= np.sqrt(6 / 32)


def test_group_norm_matches_numpy():
  gn = conv.GroupNorm(8, num_groups=2, rngs=nnx.Rngs(0))
  x = np.random.RandomState(0).randn(2, 3, 3, 8).astype(np.float32)
  g = x.reshape(2, 3, 3, 2, 4)
  ref = ((g - g.mean((1, 2, 4), keepdims=True)) / np.sqrt(g.var((1, 2, 4), keepdims=True) + 1e-6))
  np.testing.assert_allclose(gn(jnp.asarray(x)), ref.reshape(x.shape), rtol=1e-4, atol=1e-5)


def test_resnet_block_shortcut_applies_to_output():
  blk = conv.ResnetBlock(4, 8, num_groups=2, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (1, 4, 4, 4))
  h = blk.conv2(jax.nn.silu(blk.norm2(blk.conv1(jax.nn.silu(blk.norm1(x))))))
  np.testing.assert_allclose(blk(x), h + blk.nin_shortcut(h), rtol=1e-5, atol=1e-5)
  same = conv.ResnetBlock(4, 4, num_groups=2, rngs=nnx.Rngs(0))
  h = same.conv2(jax.nn.silu(same.norm2(same.conv1(jax.nn.silu(same.norm1(x))))))
  np.testing.assert_allclose(same(x), h + x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_bias", [True, False])
def test_conv_after_upsample2_equals_conv_of_the_upsampled_image(use_bias):
  c = conv.Conv(5, 7, 3, use_bias=use_bias, rngs=nnx.Rngs(0))
  if use_bias:
    c.bias.set_value(jnp.arange(7.0))
  x = jax.random.normal(jax.random.key(1), (2, 4, 6, 5))
  direct = c(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))
  got = c.after_upsample2(x)
  assert got.shape == (2, 8, 12, 7)
  # The phase kernels sum 2 or 4 taps in float32 before the products: rounding differs from the
  # direct sum by a few ulps of the ~1-magnitude outputs.
  np.testing.assert_allclose(got, direct, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="3x3"):
    conv.Conv(5, 7, 1, rngs=nnx.Rngs(0)).after_upsample2(x)


def test_vqgan_encoder_decoder_shapes_and_layout():
  enc = conv.Encoder(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4, num_groups=4,
                     rngs=nnx.Rngs(0))
  dec = conv.Decoder(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4, num_groups=4,
                     rngs=nnx.Rngs(0))
  z, y = jax.eval_shape(lambda x: (enc(x), dec(enc(x))), jnp.ones((2, 16, 16, 3)))
  assert z.shape == (2, 4, 4, 4)
  assert y.shape == (2, 16, 16, 3)
  assert dec.up[0].upsample_conv is None and dec.up[1].upsample_conv is not None
  assert enc.conv_in.bias is None and dec.conv_in.bias is not None
  spec = nnx.get_partition_spec(nnx.state(enc))["conv_in"]["kernel"].get_value()
  assert tuple(spec) == (None, None, "conv_in", "conv_out")
  with pytest.raises(ValueError, match="num_groups"):
    conv.GroupNorm(6, num_groups=4, rngs=nnx.Rngs(0))


def test_sincos_2d_matches_flextok_release_construction():
  # The release: meshgrid(arange(w), arange(h), indexing="ij"), outer products with omega, concat
  # [sin(w), cos(w), sin(h), cos(h)], then read as "(h w)". Rebuilt here in numpy for a square table.
  s, dim = 5, 16
  gw, gh = np.meshgrid(np.arange(s, dtype=np.float32), np.arange(s, dtype=np.float32), indexing="ij")
  omega = 1.0 / 10000.0 ** (np.arange(dim // 4, dtype=np.float32) / (dim // 4))
  ow, oh = gw.reshape(-1)[:, None] * omega, gh.reshape(-1)[:, None] * omega
  ref = np.concatenate([np.sin(ow), np.cos(ow), np.sin(oh), np.cos(oh)], axis=1)
  got = np.asarray(embeddings.sincos_2d(s, s, dim))
  np.testing.assert_allclose(got, ref, atol=1e-5)
  got = got.reshape(s, s, dim)
  # Channel 0 is sin(row) (omega_0 = 1), channel dim/2 is sin(col).
  np.testing.assert_allclose(got[3, 1, 0], np.sin(3.0), atol=1e-6)
  np.testing.assert_allclose(got[3, 1, dim // 2], np.sin(1.0), atol=1e-6)
  # Cropping a larger table gives the smaller one (the release crops its max-size table).
  np.testing.assert_allclose(np.asarray(embeddings.sincos_2d(8, 8, dim)).reshape(8, 8, dim)[:3, :4],
                             np.asarray(embeddings.sincos_2d(3, 4, dim)).reshape(3, 4, dim), atol=1e-6)
  # A static table is float64 rounded once: exactly the float32 rounding of the float64 formula.
  r = np.arange(s, dtype=np.float64)[:, None] * (1.0 / 10000.0 ** (np.arange(dim // 4) / (dim // 4)))
  np.testing.assert_array_equal(got[:, 0, :dim // 4], np.sin(r).astype(np.float32))


def test_timestep_embedding_hand_values():
  # FlexTok's features: max_period 256, t scaled by 1000 / max_timestep.
  t = jnp.array([0.0, 0.5])
  f = np.asarray(embeddings.timestep_embedding(t, 8, max_period=256.0, scale=1000.0))
  freqs = 1000.0 * np.exp(-np.log(256.0) * np.arange(4) / 4)
  np.testing.assert_allclose(f[0], [1, 1, 1, 1, 0, 0, 0, 0], atol=1e-6)
  np.testing.assert_allclose(f[1], np.concatenate([np.cos(0.5 * freqs), np.sin(0.5 * freqs)]),
                             atol=2e-4)
  odd = embeddings.timestep_embedding(t, 7)
  assert odd.shape == (2, 7) and float(jnp.abs(odd[:, -1]).max()) == 0.0  # zero-padded
