"""Stable Diffusion's VAE (diffusers AutoencoderKL / CompVis ldm) converted onto FlexTokVAE.

tests/fixtures/official/ldm_vae_tiny_* is a tiny random diffusers 0.35.2 `AutoencoderKL`
(block_out_channels (8, 16), layers_per_block 1, norm_num_groups 4, 4 latent channels, mid attention)
saved in the diffusers layout (+ its config.json) and, through a key map written in
make_ldm_vae_fixture.py.txt, in the CompVis/ldm layout, with the official encoder mean / logvar and
decoder outputs on 16 x 16 inputs. ldm_vae_release_shapes.json.gz holds sd-vae-ft-mse's state-dict
shapes in both layouts (built on torch's meta device).
"""
import functools
import gzip
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from jaxtok import convert as convert_lib
from jaxtok.convert import common
from jaxtok.convert import ldm_vae as L

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "official")
DIFFUSERS = os.path.join(FIXTURES, "ldm_vae_tiny_diffusers.safetensors")
LDM = os.path.join(FIXTURES, "ldm_vae_tiny_ldm.safetensors")
CONFIG = os.path.join(FIXTURES, "ldm_vae_tiny_config.json")
TINY = dict(name="ldm_vae", channels=[8, 16], latent_channels=4, layers_per_block=1, norm_groups=4,
            mid_attention=True, scaling_factor=0.18215)
TOL = 1e-4


@functools.lru_cache(maxsize=None)
def _io():
  with np.load(os.path.join(FIXTURES, "ldm_vae_tiny_io.npz")) as f:
    return {k: f[k] for k in f.files}


@functools.lru_cache(maxsize=None)
def _fns():
  """jitted (encode, decode) of the tiny config's FlexTokVAE as functions of its parameters."""
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: L.make_model(TINY, rngs=nnx.Rngs(0))))
  enc = jax.jit(lambda p, x: nnx.merge(graphdef, p).encode(x))
  dec = jax.jit(lambda p, z: nnx.merge(graphdef, p).decode(z))
  return enc, dec


def _leaves_equal(a, b):
  fa, fb = nnx.to_flat_state(a), nnx.to_flat_state(b)
  assert [p for p, _ in fa] == [p for p, _ in fb]
  for (_, x), (_, y) in zip(fa, fb):
    np.testing.assert_array_equal(np.asarray(x.get_value()), np.asarray(y.get_value()))


@pytest.fixture(scope="module")
def diffusers_dir(tmp_path_factory):
  """A diffusers model directory (weights + config.json), as save_pretrained writes it."""
  d = tmp_path_factory.mktemp("sdvae") / "vae"
  d.mkdir()
  shutil.copy(DIFFUSERS, d / L.DIFFUSERS_WEIGHTS)
  shutil.copy(CONFIG, d / "config.json")
  return str(d)


@pytest.fixture(scope="module")
def reference(diffusers_dir):
  return L.load(diffusers_dir)


@pytest.mark.parametrize("layout", ["diffusers", "ldm"])
def test_both_layouts_match_the_official_encoder_and_decoder(layout, diffusers_dir):
  """Encoder mean / clamped logvar and decoder outputs (of the mean and of random latents) equal
  diffusers' to 1e-4, from the diffusers directory (sizes from config.json) and from the ldm file
  (sizes from the shapes, norm groups given)."""
  if layout == "diffusers":
    cfg, params = L.load(diffusers_dir)
  else:
    cfg, params = L.load(LDM, {"norm_groups": 4})
  assert cfg == TINY
  io, (enc, dec) = _io(), _fns()
  mean, logvar = enc(params, jnp.asarray(io["x"]))
  np.testing.assert_allclose(mean, io["mean"], atol=TOL)
  np.testing.assert_allclose(logvar, io["logvar"], atol=TOL)
  np.testing.assert_allclose(dec(params, jnp.asarray(io["mean"])), io["decoded_mean"], atol=TOL)
  np.testing.assert_allclose(dec(params, jnp.asarray(io["z"])), io["decoded_z"], atol=TOL)


def test_old_diffusers_names_and_whole_sd_checkpoints_give_the_same_parameters(tmp_path, reference):
  """Pre-0.14 diffusers attention names (query/key/value/proj_attn), a VAE-only ldm file with EMA
  bookkeeping and loss tensors, and a full Stable Diffusion checkpoint (ldm names under
  first_stage_model., next to UNet / text-encoder tensors) convert to exactly the parameters of the
  diffusers file; EMA weight copies are refused, named."""
  flat, _ = common.read_checkpoint(DIFFUSERS)
  old = {}
  for k, v in flat.items():
    for new, was in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
      k = k.replace(f".attentions.0.{new}.", f".attentions.0.{was}.")
    old[k] = v
  assert any(".attentions.0.query." in k for k in old)
  save_file(old, str(tmp_path / "old.safetensors"))
  cfg, params = L.load(tmp_path / "old.safetensors", CONFIG)  # the config.json as a path
  assert cfg == TINY
  _leaves_equal(params, reference[1])

  ldm, _ = common.read_checkpoint(LDM)
  # A VAE-only ldm file as released (vae-ft-mse-840000-ema-pruned.ckpt): EMA bookkeeping scalars and
  # the training loss's tensors beside the weights.
  released = dict(ldm, **{"model_ema.decay": np.array(0.9999, np.float32),
                          "model_ema.num_updates": np.array(7, np.int32),
                          "loss.logvar": np.zeros((), np.float32)})
  save_file(released, str(tmp_path / "vae.safetensors"))
  cfg, params = L.load(tmp_path / "vae.safetensors", {"norm_groups": 4})
  assert cfg == TINY
  _leaves_equal(params, reference[1])
  save_file(dict(released, **{"model_ema.encoderconv_inweight": ldm["encoder.conv_in.weight"]}),
            str(tmp_path / "ema.safetensors"))
  with pytest.raises(ValueError, match=r"unexpected keys \['model_ema.encoderconv_inweight'\]"):
    L.load(tmp_path / "ema.safetensors", {"norm_groups": 4})

  full = {L.SD_PREFIX + k: v for k, v in ldm.items()}
  full["first_stage_model.loss.logvar"] = np.zeros((), np.float32)
  full["model.diffusion_model.input_blocks.0.0.weight"] = np.ones((2, 4, 3, 3), np.float16)
  full["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = np.ones(3, np.float16)
  save_file(full, str(tmp_path / "sd.safetensors"))
  cfg, params = L.load(tmp_path / "sd.safetensors", {"norm_groups": 4})
  assert cfg == TINY
  _leaves_equal(params, reference[1])


@pytest.mark.parametrize("layout", ["diffusers", "ldm"])
def test_release_shapes_convert_onto_sd_vae_ft_mse_without_allocating(layout):
  """sd-vae-ft-mse's state dict shapes (meta device) convert key for key onto the abstract
  parameters of the released config (zero-stride stand-ins: nothing of the model's size is
  allocated), with its config.json giving the released sizes."""
  with gzip.open(os.path.join(FIXTURES, "ldm_vae_release_shapes.json.gz"), "rt") as f:
    release = json.load(f)
  flat = {k: np.broadcast_to(np.float32(0), s) for k, s in release[layout].items()}
  sd, found = L.to_diffusers_names(flat)
  assert found == layout
  cfg = L.resolve_config(release["config"] if layout == "diffusers" else None, None, sd)
  assert cfg == dict(L.RELEASED["stabilityai/sd-vae-ft-mse"], name="ldm_vae",
                     channels=[128, 256, 512, 512])
  out = L.convert(sd, cfg)
  common.check_keys(common.state_shapes(L.abstract_params(cfg)), out, source=layout)
  n = sum(int(np.prod(v.shape)) for v in out.values())
  assert 83_000_000 < n < 84_000_000  # sd-vae-ft-mse: 83.65M parameters


def test_wrong_files_and_configs_are_refused_naming_the_problem(tmp_path):
  flat, _ = common.read_checkpoint(DIFFUSERS)
  sd, _ = L.to_diffusers_names(flat)
  with pytest.raises(ValueError, match=r"missing keys \['encoder.conv_in.bias'\]"):
    L.convert({k: v for k, v in sd.items() if k != "encoder.conv_in.bias"}, TINY)
  with pytest.raises(ValueError, match=r"unexpected keys \['encoder.extra.weight'\]"):
    L.convert(dict(sd, **{"encoder.extra.weight": np.zeros(1)}), TINY)
  bad = dict(sd, **{"decoder.conv_out.weight": np.zeros((3, 8, 1, 1), np.float32)})
  with pytest.raises(ValueError, match=r"decoder.conv_out.weight \[\[3, 8, 1, 1\]\] -> dec_out.kernel "
                                       r"\[1, 1, 8, 3\], expected \[3, 3, 8, 3\]"):
    L.convert(bad, TINY)
  with open(CONFIG) as f:
    official = json.load(f)
  named = dict(official, _class_name="AutoencoderKL", _diffusers_version="0.4.2")
  assert L.config_from_diffusers(named) == TINY
  with pytest.raises(ValueError, match="describes a 'UNet2DModel'; expected an AutoencoderKL"):
    L.config_from_diffusers(dict(named, _class_name="UNet2DModel"))
  with pytest.raises(ValueError, match=r"layers_per_block=2 but the tensors' shapes say 1"):
    L.resolve_config(dict(official, layers_per_block=2), None, sd)
  with pytest.raises(ValueError, match=r"shift_factor=0.06.*only shift_factor=None"):
    L.config_from_diffusers(dict(official, shift_factor=0.06))
  with pytest.raises(ValueError, match=r"use_quant_conv=False"):
    L.config_from_diffusers(dict(official, use_quant_conv=False))
  with pytest.raises(ValueError, match=r"option\(s\) \['new_option'\]"):
    L.config_from_diffusers(dict(official, new_option=1))
  with pytest.raises(ValueError, match=r"up_block_types=\['AttnUpDecoderBlock2D'"):
    L.config_from_diffusers(dict(official, up_block_types=["AttnUpDecoderBlock2D"] * 2))
  with pytest.raises(ValueError, match=r"unknown ldm_vae config key\(s\) \['groups'\]"):
    L.check_config(dict(TINY, groups=4))
  with pytest.raises(ValueError, match="scaling_factor must be a positive number, got -1"):
    L.check_config(dict(TINY, scaling_factor=-1))
  with pytest.raises(ValueError, match="does not exist"):
    L.load(tmp_path / "none.safetensors")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="without diffusion_pytorch_model.safetensors"):
    L.load(tmp_path / "empty")


def test_convert_registry_round_trip(tmp_path, diffusers_dir, reference):
  """convert.convert("ldm_vae", ...) -> save_converted -> load_converted (what tools/convert.py
  --model ldm_vae writes) gives back the config and the parameters bitwise; read_weights reads the
  directory as a frozen VAE's weights."""
  cfg, params = convert_lib.convert("ldm_vae", diffusers_dir)
  assert "ldm_vae" in convert_lib.MODELS and cfg == TINY
  out = convert_lib.save_converted(tmp_path / "out", cfg, params)
  cfg2, params2 = convert_lib.load_converted(out)
  assert cfg2 == cfg
  _leaves_equal(params2, reference[1])
  cfg3, flat = L.read_weights(out)
  assert cfg3 == cfg
  np.testing.assert_array_equal(flat["dec_out.kernel"],
                                np.asarray(reference[1]["dec_out"]["kernel"].get_value()))
  assert not flat["dec_out.kernel"].flags.writeable
