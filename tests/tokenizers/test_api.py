"""The functional tokenizer API: compile once per (shape, num_tokens), input validation, logical
axes and shardings, sharded == unsharded, bf16 compute and remat."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok import sharding
from jaxtok.tokenizers import api, build

CFG = dict(name="titok", image_size=32, patch_size=8, encoder_width=16, encoder_depth=1,
           encoder_heads=2, decoder_width=16, decoder_depth=1, decoder_heads=2,
           num_latent_tokens=6, token_size=4, codebook_size=16)


@pytest.fixture(scope="module")
def tok():
  return build(CFG)


@pytest.fixture(scope="module")
def params(tok):
  return tok.init(jax.random.key(0))


def _images(b=2, seed=0):
  return jax.random.uniform(jax.random.key(seed), (b, 32, 32, 3))


def test_compiles_once_per_shape_and_num_tokens(tok, params):
  before = tok.trace_counts["encode"]
  x = _images()
  a = tok.encode(params, x, num_tokens=3)
  tok.encode(params, _images(seed=1), num_tokens=3)
  assert tok.trace_counts["encode"] == before + 1
  b = tok.encode(params, x)
  tok.encode(params, _images(seed=2))
  assert tok.trace_counts["encode"] == before + 2
  np.testing.assert_array_equal(a.tokens, b.tokens[:, :3])
  tok.encode(params, _images(b=4), num_tokens=3)
  assert tok.trace_counts["encode"] == before + 3
  r0 = tok.trace_counts["reconstruct"]
  img = tok.reconstruct(params, x, num_tokens=2)
  tok.reconstruct(params, _images(seed=5), num_tokens=2)
  assert tok.trace_counts["reconstruct"] == r0 + 1
  assert img.shape == (2, 32, 32, 3) and img.dtype == jnp.float32
  np.testing.assert_allclose(img, tok.decode(params, a.tokens[:, :2]), rtol=1e-5, atol=1e-6)
  d0 = tok.trace_counts["decode"]
  tok.decode(params, a.tokens, num_tokens=2)
  tok.decode(params, b.tokens[:, :3], num_tokens=2)  # same shape and option: no new trace
  assert tok.trace_counts["decode"] == d0 + 1


def test_init_compiles_once_per_mesh(tok, params):
  before = tok.trace_counts["init"]
  again = tok.init(jax.random.key(0))
  other = tok.init(jax.random.key(1))
  assert tok.trace_counts["init"] == before  # the module fixture already compiled it
  jax.tree.map(np.testing.assert_array_equal, again, params)
  assert not np.array_equal(jax.tree.leaves(other)[0], jax.tree.leaves(params)[0])
  mesh = sharding.make_mesh()
  tok.init(jax.random.key(0), mesh=mesh)
  tok.init(jax.random.key(2), mesh=mesh)
  assert tok.trace_counts["init"] == before + 1


@pytest.mark.parametrize("images,exc,match", [
    (np.zeros((2, 16, 16, 3), np.float32), ValueError, "32x32"),
    (np.zeros((2, 32, 32, 1), np.float32), ValueError, "3 channels"),
    (np.zeros((32, 32, 3), np.float32), ValueError, "rank 4"),
    (np.full((1, 32, 32, 3), 1.5, np.float32), ValueError, r"\[0, 1\]"),
    (np.full((1, 32, 32, 3), -0.1, np.float32), ValueError, r"\[0, 1\]"),
    (np.zeros((1, 32, 32, 3), np.uint8), TypeError, "floating"),
    ([[0.0]], TypeError, "array"),
])
def test_rejects_bad_images(tok, params, images, exc, match):
  with pytest.raises(exc, match="images.*" + match):
    tok.encode(params, images)
  with pytest.raises(exc, match=match):
    tok.reconstruct(params, images)


@pytest.mark.parametrize("k,exc", [(0, ValueError), (7, ValueError), (2.0, TypeError),
                                   (True, TypeError)])
def test_rejects_bad_num_tokens(tok, params, k, exc):
  with pytest.raises(exc, match=r"num_tokens.*\[1, 6\]"):
    tok.encode(params, _images(), num_tokens=k)


def test_rejects_bad_tokens_and_names(tok, params):
  with pytest.raises(ValueError, match="tokens"):
    tok.decode(params, jnp.zeros((2, 9), jnp.int32))
  with pytest.raises(ValueError, match="config.name"):
    build(dict(CFG, name="nope"))
  with pytest.raises(ValueError, match="dtype"):
    build(dict(CFG, dtype="int32"))


def test_params_carry_logical_axes_and_shard_on_a_2x2x2_mesh(tok):
  abstract = tok.abstract_params()
  specs = nnx.get_partition_spec(abstract)
  qkv = specs["encoder"]["transformer"]["blocks"][0]["attn"]["qkv"].get_value()
  assert tuple(qkv) == ("embed", None, "heads", "kv")
  assert tuple(specs["codebook"].get_value()) == ("codebook", None)
  assert tuple(specs["encoder"]["patch_embed"]["kernel"].get_value()) == ("patch", "embed")
  # Every weight matrix/table is named (no silently replicated weights).
  for path, spec in jax.tree_util.tree_leaves_with_path(
      specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)):
    assert len(spec) < 2 or any(n is not None for n in spec), path
  mesh = sharding.make_mesh((("data", 2), ("fsdp", 2), ("tensor", 2)))
  shard = tok.shardings(mesh)
  qkv_sh = shard["encoder"]["transformer"]["blocks"][0]["attn"]["qkv"].get_value()
  assert qkv_sh.spec == jax.sharding.PartitionSpec("fsdp", None, "tensor", None)
  params = tok.init(jax.random.key(0), mesh=mesh)
  leaf = params["encoder"]["transformer"]["blocks"][0]["mlp"]["up"]["kernel"].get_value()
  assert leaf.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert len(leaf.addressable_shards) == 8 and leaf.addressable_shards[0].data.shape == (8, 32)


def test_sharded_encode_equals_unsharded(tok, params):
  mesh = sharding.make_mesh((("data", 2), ("fsdp", 2), ("tensor", 2)))
  x = _images(b=8, seed=3)
  ref = tok.encode(params, x)
  ref_img = tok.reconstruct(params, x)
  sp = jax.device_put(params, tok.shardings(mesh))
  sx = jax.device_put(x, sharding.batch_sharding(mesh, 4))
  assert len(sx.sharding.device_set) == 8
  out = tok.encode(sp, sx)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_allclose(out.codes, ref.codes, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.losses["commitment"], ref.losses["commitment"], rtol=1e-5)
  np.testing.assert_allclose(tok.reconstruct(sp, sx), ref_img, rtol=1e-4, atol=1e-6)


def test_bf16_compute_and_remat(params):
  x = _images()
  ref = build(CFG).reconstruct(params, x)
  bf = build(dict(CFG, dtype="bfloat16", remat=True))
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(bf.abstract_params()))
  out = bf.reconstruct(params, x)
  assert out.dtype == jnp.float32
  scale = float(jnp.abs(ref).max())
  assert float(jnp.abs(out - ref).max()) < 0.1 * scale
  enc = bf.encode(params, x)
  assert enc.codes.dtype == jnp.float32 and enc.losses["commitment"].dtype == jnp.float32
  rm = build(dict(CFG, remat=True))
  np.testing.assert_allclose(rm.reconstruct(params, x), ref, rtol=1e-5, atol=1e-6)


def test_check_helpers_under_trace():
  # Under jit only shapes/dtypes are checked; the range check needs concrete values.
  jax.jit(lambda x: api.check_images(x, 32) or x)(jnp.full((1, 32, 32, 3), 2.0))
  with pytest.raises(ValueError, match="32x32"):
    jax.jit(lambda x: api.check_images(x, 32) or x)(jnp.zeros((1, 8, 8, 3)))
