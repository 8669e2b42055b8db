"""Parity of jaxtok's FlexTok with the official apple/ml-flextok code.

tests/fixtures/official/flextok_tiny.safetensors is a tiny random FlexTok (VAE f2, widths 48,
head_dim 24, 2 + 2 blocks, 16 registers) saved by the official code with its hydra config in the
metadata, and flextok_tiny_io.npz holds the official outputs for fixed inputs (see
make_flextok_fixtures.py.txt there). Everything here is float32 and must match to 1e-4.
"""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.convert import flextok as C
from jaxtok.tokenizers import api

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "official")
WEIGHTS = os.path.join(FIXTURES, "flextok_tiny.safetensors")
TOL = 1e-4
# What the fixture's sizes do not say: its image size (the tables cover up to 40 px) and the VAE's
# GroupNorm groups (diffusers' config, not saved in the FlexTok checkpoint).
OVERRIDES = dict(image_size=32, vae_norm_groups=4)


@functools.lru_cache(maxsize=None)
def _io():
  with np.load(os.path.join(FIXTURES, "flextok_tiny_io.npz")) as f:
    return {k: f[k] for k in f.files}


@functools.lru_cache(maxsize=None)
def _checkpoint():
  return C.read_checkpoint(WEIGHTS)


@functools.lru_cache(maxsize=None)
def _loaded():
  cfg, tok, params = C.load(WEIGHTS, **OVERRIDES)
  return cfg, tok, params


def _sd():
  return dict(_checkpoint()[0])


def _cfg(sd=None, **kw):
  sd, meta = (_sd(), _checkpoint()[1]) if sd is None else (sd, _checkpoint()[1])
  return C.jaxtok_config(sd, C.parse_metadata(meta), **{**OVERRIDES, **kw})


def _max_err(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


# ----------------------------------------------------------------------------- config


def test_config_read_from_the_checkpoint():
  cfg, tok, _ = _loaded()
  assert cfg["name"] == "flextok"
  want = dict(enc_width=48, dec_width=48, enc_depth=2, dec_depth=2, head_dim=24, num_tokens=16,
              patch_size=2, mlp_ratio=4.0, fsq_levels=(8, 8, 8, 5, 5, 5), vae_channels=(8, 16),
              vae_layers_per_block=1, vae_latent_channels=4, vae_scaling_factor=0.75,
              vae_sample_posterior=False, max_timestep=1.0, cond_dropout=0.2,
              nested_dropout_mode="uniform", image_size=32, null_cond="learned")
  assert {k: cfg[k] for k in want} == want
  assert tok.image_size == 32 and tok.max_tokens == 16
  # Without the override, the image size is the largest the 10x10 position tables cover.
  assert C.jaxtok_config(_sd(), C.parse_metadata(_checkpoint()[1]), vae_norm_groups=4)[
      "image_size"] == 40


def test_metadata_is_parsed_without_running_code():
  meta = {"a": "{'x': 1, 'y': [2, 3]}", "b": "__import__('os').getcwd()", "c": "hello"}
  out = C.parse_metadata(meta)
  assert out == {"a": {"x": 1, "y": [2, 3]}, "b": "__import__('os').getcwd()", "c": "hello"}


# ----------------------------------------------------------------------------- parity


@functools.lru_cache(maxsize=None)
def _fns():
  _, tok, _ = _loaded()
  g = tok.graphdef

  @jax.jit
  def vae(params, images, latents):
    m = nnx.merge(g, params)
    mean, logvar = m.vae.encode(images)
    return mean, logvar, m.vae.decode(latents / m.scaling_factor)

  @jax.jit
  def encode(params, images01):
    m = nnx.merge(g, params)
    lat = m.images_to_latents(images01)
    return lat, m.encode_latents(lat, m.num_tokens), m.encode(images01)

  @jax.jit
  def velocity(params, x_t, t, codes, keep, null):
    return nnx.merge(g, params).velocity(x_t, t, codes, keep, null)

  @functools.partial(jax.jit, static_argnums=(3, 4, 5))
  def decode(params, tokens, noise, steps, scale, guidance):
    return nnx.merge(g, params).decode(tokens, num_steps=steps, noise=noise, cfg_scale=scale,
                                       guidance=guidance)

  @jax.jit
  def to_images(params, latents):
    return nnx.merge(g, params).latents_to_images(latents)

  return vae, encode, velocity, decode, to_images


def test_vae_encode_decode_match_official():
  io, (_, _, params) = _io(), _loaded()
  mean, logvar, dec = _fns()[0](params, io["images"], io["vae_latents"])
  assert _max_err(mean, io["vae_mean"]) < TOL
  assert _max_err(logvar, io["vae_logvar"]) < TOL
  assert _max_err(dec, io["vae_decoded"]) < TOL


def test_encoder_registers_and_tokens_match_official():
  io, (_, _, params) = _io(), _loaded()
  images01 = (io["images"] + 1.0) / 2.0  # jaxtok takes [0, 1]; the release [-1, 1]
  lat, z, out = _fns()[1](params, images01)
  assert _max_err(lat, io["vae_latents"]) < TOL
  assert _max_err(z, io["enc_registers"]) < TOL
  np.testing.assert_array_equal(np.asarray(out.tokens), io["tokens"])
  assert _max_err(out.codes, io["quants"]) < TOL
  # The release always runs all registers at inference; by its causal register mask a prefix is the
  # same, which jaxtok uses to encode fewer tokens.
  _, tok, params = _loaded()
  np.testing.assert_array_equal(np.asarray(tok.encode(params, images01, num_tokens=5).tokens),
                                io["tokens"][:, :5])


def test_decoder_velocity_matches_official():
  io, (_, _, params) = _io(), _loaded()
  velocity = _fns()[2]
  # Sample 0 keeps 5 of 16 registers (the rest get the mask token); sample 1 is the null condition.
  v = velocity(params, io["x_t"], io["t"], io["quants"], io["keep_k"], io["null"])
  assert _max_err(v, io["vel"]) < TOL
  v = velocity(params, io["x_t"], io["t"], io["quants"], jnp.full((2,), 16), jnp.zeros((2,), bool))
  assert _max_err(v, io["vel_full"]) < TOL
  assert _max_err(io["vel"], io["vel_full"]) > 1e-2  # the two settings do differ


def test_detokenize_matches_official_with_and_without_apg():
  io, (_, _, params) = _io(), _loaded()
  _, _, _, decode, to_images = _fns()
  k, steps = int(io["dec_k"]), int(io["dec_steps"])
  tokens = jnp.asarray(io["tokens"][:, :k])
  out = decode(params, tokens, io["noise"], steps, 1.0, "cfg")
  assert _max_err(out, np.clip((io["dec_images"] + 1.0) / 2.0, 0.0, 1.0)) < TOL
  # APG (the README's scale 7.5): the official run returned latents; jaxtok's VAE (checked above)
  # turns them into images.
  out = decode(params, tokens, io["noise"], steps, 7.5, "apg")
  assert _max_err(out, to_images(params, io["dec_latents_apg"])) < TOL


# ----------------------------------------------------------------------------- errors


def test_missing_unexpected_and_misshapen_tensors_are_named():
  cfg = _cfg()
  sd = _sd()
  del sd["decoder.module_dict.dec_transformer.blocks.1.mlp.fc2.weight"]
  sd["encoder.module_dict.enc_extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match=r"missing 1 official keys: \['decoder.module_dict.dec_transformer"
                                       r"\.blocks\.1\.mlp\.fc2\.weight'\].*unexpected 1 official keys: "
                                       r"\['encoder.module_dict.enc_extra.weight'\]"):
    C.convert_state_dict(sd, cfg)
  sd = _sd()
  key = "encoder.module_dict.enc_transformer.blocks.0.mlp.fc1.weight"
  sd[key] = sd[key][:-1]
  with pytest.raises(ValueError, match=r"official FlexTok -> jaxtok: shape mismatches "
                                       r"\[encoder\.blocks\.0\.mlp\.gate\.kernel: \[48, 127\] vs "
                                       r"expected \[48, 128\]\]"):
    C.to_params(C.convert_state_dict(sd, cfg), cfg)
  # A config claiming more blocks than the file holds: the absent block's keys are named.
  with pytest.raises(ValueError, match=r"missing 9 official keys: \['decoder\.module_dict\."
                                       r"dec_transformer\.blocks\.2\.adaLN"):
    C.convert_state_dict(_sd(), dict(cfg, dec_depth=3))


def test_a_truncated_or_foreign_file_is_refused(tmp_path):
  raw = open(WEIGHTS, "rb").read()
  bad = tmp_path / "cut.safetensors"
  bad.write_bytes(raw[:len(raw) // 2])
  with pytest.raises(ValueError, match="truncated"):
    C.read_checkpoint(bad)
  junk = tmp_path / "junk.safetensors"
  junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
  with pytest.raises(ValueError, match="not a safetensors file"):
    C.read_checkpoint(junk)
  with pytest.raises(ValueError, match="does not exist"):
    C.read_checkpoint(tmp_path / "absent.safetensors")
  # A state dict that is not FlexTok's.
  with pytest.raises(ValueError, match="has no 'encoder.module_dict.enc_patch_emb.patch_proj.weight'"):
    C.infer_config({"a.weight": np.zeros((2, 2))})


def test_bfloat16_and_float16_safetensors_are_read_without_torch(tmp_path):
  import ml_dtypes
  a = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
  tensors = {"x": ("BF16", a.astype(ml_dtypes.bfloat16)), "y": ("F16", a.astype(np.float16))}
  header, blobs, offset = {"__metadata__": {"k": "1"}}, [], 0
  for key, (dtype, arr) in tensors.items():
    raw = arr.tobytes()
    header[key] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
    blobs.append(raw)
    offset += len(raw)
  h = json.dumps(header).encode()
  path = tmp_path / "half.safetensors"
  path.write_bytes(len(h).to_bytes(8, "little") + h + b"".join(blobs))
  sd, meta = C.read_checkpoint(path)
  assert meta == {"k": "1"}
  np.testing.assert_array_equal(sd["x"].astype(np.float32), a.astype(ml_dtypes.bfloat16).astype(np.float32))
  np.testing.assert_array_equal(sd["y"].astype(np.float32), a.astype(np.float16).astype(np.float32))
  assert _max_err(sd["x"], a) > 0  # bfloat16 really was read as bfloat16


def test_layouts_jaxtok_cannot_reproduce_are_refused():
  hydra = C.parse_metadata(_checkpoint()[1])

  def variant(section, module, **changes):
    h = json.loads(json.dumps(hydra))
    h[section]["module_dict"][module].update(changes)
    return h

  cases = [
      (variant("encoder", "enc_transformer", qk_norm=False), "encoder qk_norm=False"),
      (variant("decoder", "dec_transformer", gated_mlp=False), "decoder gated_mlp=False"),
      (variant("encoder", "enc_transformer", qkv_bias=True), "encoder qkv_bias=True"),
      (variant("encoder", "enc_seq_packer", mask_mode="full"), "encoder mask_mode 'full'"),
      (variant("decoder", "dec_patches_posemb_module", posemb_scaling="interpolate"),
       "decoder patch positions sincos/interpolate"),
      (variant("decoder", "dec_transformer", adaLN_expansion=1), "decoder adaLN_expansion 1"),
      (variant("decoder", "dec_latent_dropout", replace_with_single_token=True),
       "null condition as a single token"),
  ]
  for h, msg in cases:
    with pytest.raises(ValueError, match="unsupported official FlexTok layout: " + msg):
      C.config_from_official(h)
  # Config and weights that disagree.
  h = variant("encoder", "enc_transformer", depth=3)
  with pytest.raises(ValueError, match="enc_depth=3 but the weights' shapes give 2"):
    C.jaxtok_config(_sd(), h, **OVERRIDES)
  # No scaling factor anywhere.
  h = json.loads(json.dumps(hydra))
  h["vae"]["scaling_factor"] = None
  with pytest.raises(ValueError, match="pass vae_scaling_factor="):
    C.jaxtok_config(_sd(), h, **OVERRIDES)
  assert C.jaxtok_config(_sd(), h, vae_scaling_factor=0.5, **OVERRIDES)["vae_scaling_factor"] == 0.5
  with pytest.raises(ValueError, match="unknown FlexTok config fields"):
    _cfg(vae_scale=0.5)
  with pytest.raises(ValueError, match="image_size 48 needs more"):
    _cfg(image_size=48)


def test_a_position_table_that_is_not_jaxtoks_sincos_is_refused():
  sd = _sd()
  key = "decoder.module_dict.dec_patches_posemb_module.posembs"
  sd[key] = sd[key].transpose(0, 1, 3, 2)  # rows and columns swapped
  with pytest.raises(ValueError, match="dec_patches_posemb_module.posembs: the stored 2D sin-cos"):
    C.convert_state_dict(sd, _cfg())


def test_zero_null_condition_and_old_diffusers_attention_names():
  hydra = C.parse_metadata(_checkpoint()[1])
  h = json.loads(json.dumps(hydra))
  h["decoder"]["module_dict"]["dec_latent_dropout"] = {
      "_target_": "flextok.model.preprocessors.nullcond.ZeroNullCond",
      "read_write_key": "dec_quants", "dropout_prob": 0.1}
  sd = _sd()
  del sd["decoder.module_dict.dec_latent_dropout.nullcond"]
  cfg = C.jaxtok_config(sd, h, **OVERRIDES)
  assert cfg["null_cond"] == "zero" and cfg["cond_dropout"] == 0.1
  flat = C.convert_state_dict(sd, cfg)
  np.testing.assert_array_equal(flat["null_cond"], np.zeros(48, np.float32))
  # The learned-null layout requires the key.
  with pytest.raises(ValueError, match="missing 1 official keys.*dec_latent_dropout.nullcond"):
    C.convert_state_dict(sd, dict(cfg, null_cond="learned"))
  # diffusers checkpoints from before the attention refactor (query/key/value/proj_attn).
  sd = _sd()
  renamed = {}
  for k, v in sd.items():
    for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
      k = k.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
    renamed[k] = v
  assert renamed.keys() != sd.keys()
  want = C.convert_state_dict(sd, _cfg())
  got = C.convert_state_dict(renamed, _cfg())
  assert want.keys() == got.keys()
  for k in want:
    np.testing.assert_array_equal(want[k], got[k])


# ----------------------------------------------------------------------------- released models


def test_released_names_are_checked_against_the_file():
  with pytest.raises(ValueError, match="unknown released FlexTok 'EPFL-VILAB/flextok_d99'"):
    _cfg(name="EPFL-VILAB/flextok_d99")
  # The tiny file is no released model: the first disagreeing field is named.
  with pytest.raises(ValueError, match="EPFL-VILAB/flextok_d18_d28_dfn: RELEASED table says "
                                       "head_dim=64 but the checkpoint has 24"):
    _cfg(name="EPFL-VILAB/flextok_d18_d28_dfn")


def test_released_table_and_its_structure_map_every_parameter():
  """The key map covers exactly the jaxtok model's parameters for the released structure: a 4-level
  VAE with 2 ResNets per level and mid attention, learned null condition, separate encoder and
  decoder depths. (Narrow widths and depths 2/3 keep it cheap: the map loops over depth and does
  not depend on widths.)"""
  for name, r in C.RELEASED.items():
    assert r["enc_width"] == 64 * r["enc_depth"] and r["dec_width"] == 64 * r["dec_depth"], name
    assert (r["head_dim"], r["num_tokens"], r["patch_size"], r["image_size"]) == (64, 256, 2, 256)
    assert r["vae_channels"] == (128, 256, 512, 512) and r["vae_layers_per_block"] == 2
  r = C.RELEASED["EPFL-VILAB/flextok_d18_d28_dfn"]
  cfg = {"name": "flextok", "use_vae": True, "null_cond": "learned", "vae_scaling_factor": 1.0,
         "vae_mid_attention": True, **r, "enc_width": 32, "dec_width": 32, "enc_depth": 2,
         "dec_depth": 3, "head_dim": 16, "vae_channels": (8, 16, 32, 32), "vae_norm_groups": 8}
  tok = api.build(cfg)
  shapes = {".".join(str(k) for k in path): tuple(v.shape)
            for path, v in nnx.to_flat_state(tok.abstract_params())}
  targets = [dst for _, dst, _ in C.key_map(cfg)]
  assert len(targets) == len(set(targets))
  assert set(targets) == set(shapes), set(shapes) ^ set(targets)
