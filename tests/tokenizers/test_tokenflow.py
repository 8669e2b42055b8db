"""TokenFlow (`tokenizers.tokenflow`) on the tiny config: shared indices, frozen tower, falling losses;
single-scale (scales=single) and the release's multi-scale residual quantization."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxtok.configs import tokenflow as config_lib
from jaxtok.data import photos
from jaxtok.quantizers import dual
from jaxtok.quantizers import multiscale
from jaxtok.tokenizers import api
from jaxtok.tokenizers import tokenflow as T


SINGLE, MULTI = "tiny,scales=single", "tiny"  # the tiny grid once; scales 1, 2, 4 (21 tokens)


@functools.lru_cache(maxsize=None)
def _setup(arg=SINGLE):
  cfg = config_lib.get_config(arg).model
  tok = api.build(cfg)
  params = nnx.state(T.make_model(cfg, rngs=nnx.Rngs(0)), nnx.Param)  # eager: no init compile
  _, crops = photos.load_photos(16, heldout=8)
  return cfg, tok, params, jnp.asarray(crops)


def train_losses(forward, params, images, steps, lr=3e-3):
  """(loss terms per step, trained params, last grads) of `steps` Adam steps on one batch: pixel MSE
  + the model's losses, with forward(params, rng) -> TrainOutput."""
  opt = optax.adam(lr)

  def loss_fn(p, rng):
    out = forward(p, rng)
    terms = dict(out.losses, pixel=jnp.mean(jnp.square(out.recon - images)))
    return sum(terms.values()), terms

  @jax.jit
  def step(p, s, i):
    (_, terms), g = jax.value_and_grad(loss_fn, has_aux=True)(p, jax.random.fold_in(
        jax.random.key(0), i))
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, terms, g

  state = opt.init(params)
  hist = []
  for i in range(steps):
    params, state, terms, grads = step(params, state, i)
    hist.append(jax.device_get(terms))
  return hist, params, grads


def test_one_index_selects_the_semantic_and_the_pixel_code():
  cfg, tok, params, images = _setup()
  ds = cfg.semantic_dim

  @jax.jit
  def run(params):  # one compilation for every piece the test inspects
    model = tok.model(params)
    out = model.encode(images)
    s = model.semantic_in(model.teacher_features(images))
    z = model.encoder(images)
    p = model.quant_conv(z.reshape(z.shape[0], -1, z.shape[-1]))
    d = dual.joint_distances(s.reshape(-1, ds), p.reshape(-1, cfg.pixel_dim),
                             params["semantic_codebook"].get_value(),
                             params["pixel_codebook"].get_value())[0]
    return out, d, model.decode(out.tokens), model.decode_semantic(out.tokens)

  out, d, decoded, feats = run(params)
  k = cfg.siglip["image_size"] // cfg.siglip["patch_size"]
  assert out.tokens.shape == (8, k * k) and out.tokens.dtype == jnp.int32
  cs = np.asarray(params["semantic_codebook"].get_value())
  cp = np.asarray(params["pixel_codebook"].get_value())
  unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
  t = np.asarray(out.tokens)
  np.testing.assert_allclose(out.codes[..., :ds], unit(cs)[t], atol=1e-5)
  np.testing.assert_allclose(out.codes[..., ds:], unit(cp)[t], atol=1e-5)
  # The tokens are the argmin of the summed distances of the model's own features.
  np.testing.assert_array_equal(t.reshape(-1), np.argmin(np.asarray(d), -1))
  assert decoded.shape == images.shape and np.all(np.isfinite(decoded))
  assert feats.shape == (8, k * k, cfg.siglip["width"])
  assert np.unique(t).size > 1


@pytest.mark.slow
@pytest.mark.parametrize("arg", [SINGLE, MULTI])
def test_reconstruction_and_semantic_losses_fall_and_the_tower_stays_frozen(arg):
  _, tok, params, images = _setup(arg)
  hist, trained, grads = train_losses(
      lambda p, rng: tok.model(p).train_forward(images, rng=rng), params, images, steps=30)
  for term in ("pixel", "semantic"):
    first, last = float(hist[0][term]), float(np.mean([h[term] for h in hist[-3:]]))
    assert last < 0.8 * first, (term, first, last)
  # The frozen SigLIP tower gets no gradient and keeps its values.
  for g in jax.tree.leaves(grads["siglip"]):
    assert not np.any(np.asarray(g))
  for a, b in zip(jax.tree.leaves(params["siglip"]), jax.tree.leaves(trained["siglip"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_siglip_never_decays():
  from jaxtok.train import optim  # pylint: disable=g-import-not-at-top
  _, tok, params, _ = _setup()
  mask = optim.decay_mask(params)
  assert not any(jax.tree.leaves(mask["siglip"]))
  assert any(jax.tree.leaves(mask["encoder"]))  # the trained encoder's kernels do


def test_with_siglip_loads_a_hf_tower(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  cfg, tok, params, images = _setup()
  sc = dict(cfg.siglip)
  rng = np.random.default_rng(3)
  flat = {}
  for key, shape in {
      "embeddings.patch_embedding.weight": (32, 3, 4, 4), "embeddings.patch_embedding.bias": (32,),
      "embeddings.position_embedding.weight": (16, 32), "post_layernorm.weight": (32,),
      "post_layernorm.bias": (32,)}.items():
    flat["vision_model." + key] = rng.standard_normal(shape).astype(np.float32)
  for i in range(sc["depth"]):
    pre = f"vision_model.encoder.layers.{i}."
    for n, shape in (("layer_norm1.weight", (32,)), ("layer_norm1.bias", (32,)),
                     ("layer_norm2.weight", (32,)), ("layer_norm2.bias", (32,)),
                     ("mlp.fc1.weight", (64, 32)), ("mlp.fc1.bias", (64,)),
                     ("mlp.fc2.weight", (32, 64)), ("mlp.fc2.bias", (32,))):
      flat[pre + n] = rng.standard_normal(shape).astype(np.float32)
    for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
      flat[pre + f"self_attn.{n}.weight"] = rng.standard_normal((32, 32)).astype(np.float32)
      flat[pre + f"self_attn.{n}.bias"] = rng.standard_normal(32).astype(np.float32)
  flat["vision_model.head.probe"] = np.zeros((1, 1, 32), np.float32)  # dropped
  save_file(flat, str(tmp_path / "model.safetensors"))
  loaded = T.with_siglip(params, str(tmp_path / "model.safetensors"), sc)
  np.testing.assert_array_equal(loaded["siglip"]["pos_embed"].get_value(),
                                flat["vision_model.embeddings.position_embedding.weight"])
  np.testing.assert_array_equal(loaded["encoder"]["conv_in"]["kernel"].get_value(),
                                params["encoder"]["conv_in"]["kernel"].get_value())
  api.check_params(loaded, api.param_shapes(tok.abstract_params()))
  with pytest.raises(ValueError, match="does not exist|do not exist|No such file"):
    T.with_siglip(params, str(tmp_path / "absent.safetensors"), sc)
  with pytest.raises(ValueError, match="missing keys"):
    T.with_siglip(params, str(tmp_path / "model.safetensors"), dict(sc, depth=3))


def test_bad_configs_and_inputs():
  cfg, tok, params, images = _setup()
  base = dict(cfg.to_dict())
  with pytest.raises(ValueError, match=r"unknown TokenFlow config key\(s\) \['codebook'\]"):
    nnx.eval_shape(lambda: T.make_model(dict(base, codebook=8), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="pixel encoder's grid"):
    nnx.eval_shape(lambda: T.make_model(dict(base, ch_mult=(1, 2)), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="siglip must be a mapping"):
    nnx.eval_shape(lambda: T.make_model(dict(base, siglip=None), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="num_tokens must be None or 16"):
    tok.model(params).encode(images, num_tokens=4)
  with pytest.raises(ValueError, match=r"tokens must have shape \[B, 16\]"):
    tok.model(params).decode(jnp.zeros((1, 4), jnp.int32))
  with pytest.raises(ValueError, match="perturbation"):
    tok.model(params).train_forward(images, rng=jax.random.key(0), perturb=dict(alpha=0.1))


def test_multiscale_tokens_decode_to_the_summed_codes_of_every_scale():
  cfg, tok, params, images = _setup(MULTI)
  assert tuple(cfg.scales) == (1, 2, 4) and tok.model(params).num_latent_tokens == 21

  @jax.jit
  def run(params):
    model = tok.model(params)
    out = model.encode(images)
    _, sem, pix, tokens, _, _, _ = model._quantize(images)  # the training path, no scale dropped
    return (out, sem, pix, tokens, model.decode(out.tokens), model.decode_pixel_codes(pix),
            model.decode_semantic(out.tokens), model.semantic_decoder(sem))

  out, sem, pix, tokens, decoded, direct, feats, feats_direct = run(params)
  assert out.tokens.shape == (8, 21) and out.codes.shape == (8, 21, cfg.semantic_dim + cfg.pixel_dim)
  np.testing.assert_array_equal(out.tokens, tokens)
  # Decoding the tokens (each scale's codes upsampled and summed) is the encoder's own reconstruction.
  np.testing.assert_allclose(decoded, direct, atol=1e-5)
  assert feats.shape == (8, 16, cfg.siglip["width"])  # SigLIP's grid, whatever the token count
  np.testing.assert_allclose(feats, feats_direct, atol=1e-5)
  ms_s, ms_p = multiscale.indices_to_grid(out.tokens, params["semantic_codebook"].get_value(),
                                          params["pixel_codebook"].get_value(), (1, 2, 4))
  np.testing.assert_allclose(ms_s.reshape(8, 16, -1), sem, atol=1e-5)
  np.testing.assert_allclose(ms_p.reshape(8, 16, -1), pix, atol=1e-5)
  # The first token of each image is the 1 x 1 scale: the code of the mean feature.
  assert np.unique(np.asarray(out.tokens[:, 1:])).size > 1
  with pytest.raises(ValueError, match=r"tokens must have shape \[B, 21\]"):
    tok.model(params).decode(out.tokens[:, :16])
  with pytest.raises(ValueError, match="last scale must equal the feature grid side 4"):
    nnx.eval_shape(lambda: T.make_model(dict(cfg.to_dict(), scales=(1, 2)), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="scale_drop must be a number in"):
    nnx.eval_shape(lambda: T.make_model(dict(cfg.to_dict(), scale_drop=2.0), rngs=nnx.Rngs(0)))
