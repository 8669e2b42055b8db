"""Every model built on nn.Stack honours dtype, remat, scan_layers and attention_impl from its config
and rejects unknown config keys (naming the valid ones)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.generators import bert, gpt, mar, maskgit_official, rar
from jaxtok.tokenizers import titok, vqgan

TOKENS = jnp.asarray([[1, 2, 3, 4, 5, 0], [5, 4, 3, 2, 1, 7]], jnp.int32)
MODELS = {
    "titok": (titok.make_model, dict(name="onedpiece", image_size=16, patch_size=8, encoder_width=16,
                                     encoder_depth=2, encoder_heads=2, decoder_width=16,
                                     decoder_depth=2, decoder_heads=2, num_latent_tokens=4,
                                     token_size=4, codebook_size=16),
              lambda m: m.decode_codes(m.encode(jnp.full((2, 16, 16, 3), 0.5)).codes, num_tokens=3)),
    "gpt": (gpt.make_model, dict(name="gpt", codebook_size=16, seq_len=6, num_classes=3, width=16,
                                 depth=2, heads=2),
            lambda m: m(TOKENS, jnp.asarray([0, 2]))),
    "maskgit": (bert.make_model, dict(name="maskgit", codebook_size=16, seq_len=6, num_classes=3,
                                      width=16, depth=2, heads=2),
                lambda m: m(TOKENS, jnp.asarray([0, 2]))),
    "maskgit_official": (maskgit_official.make_model, dict(
        name="maskgit_official", arch="bert", codebook_size=16, seq_len=6, num_classes=3, width=16,
        depth=2, heads=2, intermediate=32), lambda m: m(TOKENS, jnp.asarray([0, 2]))),
    "rar": (rar.make_model, dict(name="rar", codebook_size=16, seq_len=6, num_classes=3, width=16,
                                 depth=2, heads=2),
            lambda m: m(TOKENS, jnp.asarray([0, 2]),
                        orders=jnp.asarray([[2, 0, 1, 5, 3, 4], [5, 4, 3, 2, 1, 0]]))),
    "mar": (mar.make_model, dict(name="mar", token_dim=3, seq_len=6, width=16, depth=2, heads=2,
                                 head_width=8, head_depth=1),
            lambda m: m.condition(jnp.ones((2, 6, 3)), TOKENS > 2)),
}


def _stacked(pure, path=()):
  """The pure parameter dict with each Stack's unrolled list (`transformer.blocks` / `blocks.blocks`:
  {0: .., 1: ..}) stacked on a new first axis."""
  if not isinstance(pure, dict):
    return pure
  if path[-2:] in (("transformer", "blocks"), ("blocks", "blocks"), ("layers", "blocks")):
    return jax.tree.map(lambda *a: jnp.stack(a), *[pure[i] for i in range(len(pure))])
  return {k: _stacked(v, path + (k,)) for k, v in pure.items()}


def _build(name, **options):
  make, cfg, _ = MODELS[name]
  return make(dict(cfg, **options), rngs=nnx.Rngs(0))


def _forward(name, model):
  graphdef, state = nnx.split(model)
  return jax.jit(lambda s: MODELS[name][2](nnx.merge(graphdef, s)))(state)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_scan_remat_and_attention_impl_keep_outputs(name):
  ref = _build(name)
  want = _forward(name, ref)
  variant = _build(name, scan_layers=True, remat="dots", attention_impl="xla")
  state = nnx.state(variant)
  nnx.replace_by_pure_dict(state, _stacked(nnx.to_pure_dict(nnx.state(ref))))
  nnx.update(variant, state)
  np.testing.assert_allclose(_forward(name, variant), want, rtol=1e-4, atol=1e-5)
  layered = [p for p, s in jax.tree_util.tree_leaves_with_path(
      nnx.get_partition_spec(state), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
             if len(s) and s[0] == "layers"]
  assert layered  # scan_layers stacked the blocks
  bf16 = _forward(name, nnx.merge(nnx.graphdef(_build(name, dtype="bfloat16")), nnx.state(ref)))
  np.testing.assert_allclose(np.asarray(bf16, np.float32), want, atol=0.15 * float(jnp.abs(want).max()))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_unknown_config_key_raises_listing_valid_keys(name):
  with pytest.raises(ValueError, match=r"unknown .*config key\(s\) \['remt'\]; valid keys: .*'remat'"):
    _build(name, remt="full")
  with pytest.raises(ValueError, match="attention implementation"):
    _build(name, attention_impl="flash")


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("key,value", [("seq_len", "6"), ("width", 16.0), ("depth", True),
                                       ("encoder_width", "16")])
def test_config_values_are_typed_by_the_constructor(name, key, value):
  """The constructor's annotations are the typed config: a string/float/bool where an int belongs
  fails at build time naming the key, instead of deep inside a layer (or silently)."""
  cfg = MODELS[name][1]
  if key not in cfg:
    pytest.skip(f"{name} has no {key}")
  with pytest.raises(ValueError, match=rf"config '{key}' must be int, got {value!r} "):
    _build(name, **{key: value})


VQGAN_TINY = dict(name="vqgan", image_size=16, ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=4,
                  codebook_size=8, num_groups=4)


def test_vqgan_honours_dtype_and_remat_and_refuses_transformer_options():
  images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))

  def loss(model):
    out = model.train_forward(images, rng=jax.random.key(0))
    return jnp.mean(jnp.square(out.recon - images)) + sum(out.losses.values())

  ref = vqgan.make_model(VQGAN_TINY, rngs=nnx.Rngs(0))
  want, want_grads = nnx.jit(nnx.value_and_grad(loss))(ref)
  for policy in ("full", "dots"):
    model = vqgan.make_model(dict(VQGAN_TINY, remat=policy), rngs=nnx.Rngs(0))
    got, grads = nnx.jit(nnx.value_and_grad(loss))(model)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 nnx.to_pure_dict(grads), nnx.to_pure_dict(want_grads))
  bf16 = vqgan.make_model(dict(VQGAN_TINY, dtype="bfloat16"), rngs=nnx.Rngs(0))
  assert bf16.decoder.conv_in.kernel.dtype == jnp.float32  # parameters stay float32
  np.testing.assert_allclose(np.asarray(bf16.decode_codes(ref.encode(images).codes)),
                             np.asarray(ref.decode_codes(ref.encode(images).codes)), atol=0.05)
  with pytest.raises(ValueError, match="convolutional .* scan_layers=True"):
    vqgan.make_model(dict(VQGAN_TINY, scan_layers=True), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"unknown VQGAN config key\(s\) \['chanels'\]"):
    vqgan.make_model(dict(VQGAN_TINY, chanels=8), rngs=nnx.Rngs(0))
