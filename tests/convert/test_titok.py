"""Parity of converted official TiTok / One-D-Piece checkpoints with the official PyTorch outputs.

tests/fixtures/official/{titok_legacy,titok_vq,titok_vae,onedpiece}.safetensors are tiny random
models (width 32, 2 + 2 layers, 2 heads, 32 px, patch 8, 6 tokens of 4 dims, 16 codes; the legacy
and One-D-Piece ones with a small MaskGIT-VQGAN pixel decoder) saved by the official code, and the
*_outputs.npz files hold the official outputs for fixed images (make_fixtures.py.txt there says
how). Everything is float32 and must match to 1e-4.
"""
import functools
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.convert import common
from jaxtok.convert import titok as T
from jaxtok.tokenizers import api

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "official")
TOL = 1e-4
TINY = dict(image_size=32, patch_size=8, encoder_width=32, encoder_depth=2, encoder_heads=2,
            decoder_width=32, decoder_depth=2, decoder_heads=2, num_latent_tokens=6, token_size=4,
            codebook_size=16, use_l2_norm=True)
SMALL_PIXEL = dict(legacy_reshape=True, decoder_head="proxy_codes", pixel_ch=32,
                   pixel_ch_mult=(1, 1, 1, 1), pixel_num_res_blocks=1, pixel_z_channels=8)
CONFIGS = {
    "titok_vq": dict(TINY, name="titok"),
    "titok_vae": dict(TINY, name="vae"),
    "titok_legacy": dict(TINY, name="titok", **SMALL_PIXEL),
    "onedpiece": dict(TINY, name="onedpiece", **SMALL_PIXEL),
}


def _path(name):
  return os.path.join(FIXTURES, f"{name}.safetensors")


@functools.lru_cache(maxsize=None)
def _io(name):
  with np.load(os.path.join(FIXTURES, f"{name}_outputs.npz")) as f:
    return {k: f[k] for k in f.files}


@functools.lru_cache(maxsize=None)
def _loaded(name):
  cfg, params = T.load(_path(name), CONFIGS[name])
  return api.build(cfg), params


def _err(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


@pytest.mark.parametrize("name", ["titok_vq", "titok_legacy", "onedpiece"])
def test_vq_tokens_codes_and_images_match_official(name):
  tok, params = _loaded(name)
  io = _io(name)
  model = tok.model(params)
  if "encoder_out" in io:
    z = model.encoder(jnp.asarray(io["images"]), model.latent_tokens.get_value())
    assert _err(z, io["encoder_out"]) < TOL
  out = model.encode(jnp.asarray(io["images"]))  # eager: tiny models, no compile time
  np.testing.assert_array_equal(np.asarray(out.tokens), io["tokens"])
  assert _err(out.codes, io["codes"]) < TOL
  assert _err(model.decode(jnp.asarray(io["tokens"])), io["decoded"]) < TOL


def test_legacy_proxy_logits_match_official():
  tok, params = _loaded("titok_legacy")
  io = _io("titok_legacy")
  logits = tok.model(params).decode_logits(jnp.asarray(io["tokens"]))
  assert logits.shape == io["logits"].shape == (2, 4, 4, 1024)
  assert _err(logits, io["logits"]) < TOL


def test_vae_moments_and_images_match_official():
  tok, params = _loaded("titok_vae")
  io = _io("titok_vae")
  model = tok.model(params)
  z = model.encoder(jnp.asarray(io["images"]), model.latent_tokens.get_value())
  assert _err(z, io["encoder_out"]) < TOL
  out = model.encode(jnp.asarray(io["images"]))  # vae_inference "mode": the mean
  assert _err(out.tokens, io["mean"]) < TOL
  from jaxtok.tokenizers import vae
  mean, logvar = vae.split_moments(z)
  assert _err(logvar, io["logvar"]) < TOL
  # The official kl() is [B, K] (summed over the token dims); jaxtok's sums over tokens too.
  assert _err(vae.kl_divergence(mean, logvar), io["kl"].sum(-1)) < TOL * 10
  assert _err(model.decode(jnp.asarray(io["mean"])), io["decoded"]) < TOL


@pytest.mark.parametrize("length", [1, 3])
def test_onedpiece_prefix_decoding_matches_official_length(length):
  tok, params = _loaded("onedpiece")
  io = _io("onedpiece")
  tokens = jnp.asarray(io["tokens"])
  want = io[f"decoded_{length}"]
  model = tok.model(params)
  assert _err(model.decode(tokens[:, :length]), want) < TOL
  assert _err(model.decode(tokens, num_tokens=length), want) < TOL
  assert _err(want, io["decoded"]) > 1e-3  # the prefix really changes the image


def test_convert_names_every_missing_unexpected_and_mismatched_tensor(tmp_path):
  flat, _ = common.read_checkpoint(_path("titok_vq"))
  # A decoder one layer shallower than the file: the file's layer-1 tensors are unexpected.
  with pytest.raises(ValueError, match=r"unexpected keys \[decoder\.transformer\.blocks\.1\."):
    T.load(_path("titok_vq"), dict(CONFIGS["titok_vq"], decoder_depth=1))
  # A config with more tokens: the positional tables mismatch, by name and shape.
  with pytest.raises(ValueError, match=r"latent_tokens: \[6, 32\] vs expected \[8, 32\]"):
    T.load(_path("titok_vq"), dict(CONFIGS["titok_vq"], num_latent_tokens=8))
  # A file missing a tensor and carrying a foreign one.
  from safetensors.numpy import save_file
  broken = dict(flat)
  del broken["encoder.ln_post.weight"]
  broken["encoder.extra.weight"] = np.zeros(3, np.float32)
  save_file({k: np.ascontiguousarray(v) for k, v in broken.items()}, str(tmp_path / "b.safetensors"))
  with pytest.raises(ValueError) as e:
    T.load(tmp_path / "b.safetensors", CONFIGS["titok_vq"])
  assert "missing keys [encoder.ln_post.scale]" in str(e.value)
  assert "encoder.extra.weight" in str(e.value) and "b.safetensors" in str(e.value)
  # A legacy file loaded as single-stage: the proxy head has no home.
  with pytest.raises(ValueError, match="decoder.ffn_out.kernel"):
    T.load(_path("titok_legacy"), CONFIGS["titok_vq"])


def test_infer_config_reads_shapes_and_refuses_unknown_widths():
  flat, _ = common.read_checkpoint(_path("titok_legacy"))
  with pytest.raises(ValueError, match="encoder width 32 is not a released ViT size"):
    T.infer_config(flat)
  with pytest.raises(ValueError, match="not a TiTok state dict"):
    T.infer_config({"a.weight": np.zeros(2)})


def _zeros(shape):
  return np.broadcast_to(np.float32(0), tuple(shape))  # shapes only: no memory


@functools.lru_cache(maxsize=None)
def release_shapes():
  """{released name: {official key: shape}}: the official models built on torch's meta device from
  their released configs (tests/fixtures/official/release_shapes.py.txt)."""
  import gzip
  import json
  with gzip.open(os.path.join(FIXTURES, "release_shapes.json.gz"), "rt") as f:
    return json.load(f)


@pytest.mark.parametrize("name", sorted(T.RELEASED))
def test_every_released_tokenizer_maps_onto_its_jaxtok_config(name):
  cfg = T.released(name)
  flat = {k: _zeros(s) for k, s in release_shapes()[name].items()}
  # Every tensor and shape, with the ViTs cut to 2 layers (layers all map alike) to keep this fast.
  short = {k: v for k, v in flat.items()
           if not (m := re.match(r"(en|de)coder\.transformer\.(\d+)\.", k)) or int(m.group(2)) < 2}
  small = dict(cfg, encoder_depth=2, decoder_depth=2)
  want = common.state_shapes(api.build(small).abstract_params())
  common.check_keys(want, T.convert(short, small), source=name)
  got = T.infer_config(flat)
  for key in ("patch_size", "num_latent_tokens", "token_size", "quantizer", "legacy_reshape",
              "decoder_head", "codebook_size", "use_l2_norm"):
    assert got.get(key) == cfg.get(key), key
  from jaxtok.nn.vit import vit_size
  for part in ("encoder", "decoder"):
    assert (got[f"{part}_width"], got[f"{part}_depth"], got[f"{part}_heads"]) == vit_size(cfg[f"{part}_size"])


def test_released_table_matches_the_official_configs():
  l32 = T.released("tokenizer_titok_l32_imagenet")
  assert (l32["encoder_size"], l32["decoder_size"], l32["num_latent_tokens"]) == ("L", "L", 32)
  assert l32["legacy_reshape"] and l32["use_l2_norm"] and l32["decoder_head"] == "proxy_codes"
  assert (l32["token_size"], l32["codebook_size"]) == (12, 4096)
  bl64 = T.released("yucornetto/tokenizer_titok_bl64_vq8k_imagenet")
  assert (bl64["encoder_size"], bl64["decoder_size"], bl64["token_size"], bl64["codebook_size"]) == (
      "B", "L", 64, 8192)
  assert not bl64["legacy_reshape"] and not bl64["use_l2_norm"] and bl64["decoder_head"] == "pixels"
  sl256 = T.released("tokenizer_titok_sl256_vq8k_imagenet")
  assert (sl256["encoder_size"], sl256["decoder_size"], sl256["num_latent_tokens"]) == ("S", "L", 256)
  vae = T.released("tokenizer_titok_bl128_vae_c16_imagenet")
  assert vae["name"] == "vae" and vae["quantizer"] == "vae" and vae["token_size"] == 16
  odp = T.released("One-D-Piece-S-256")
  assert odp["name"] == "onedpiece" and odp["num_latent_tokens"] == 256 and odp["legacy_reshape"]
  with pytest.raises(ValueError, match="unknown released"):
    T.released("tokenizer_titok_xl1_imagenet")


REF = os.environ.get("JAXTOK_REF_1D_TOKENIZER", "/work/ref/1d-tokenizer")


@pytest.mark.skipif(not os.path.isdir(os.path.join(REF, "configs", "infer", "TiTok")),
                    reason="needs a copy of bytedance/1d-tokenizer (JAXTOK_REF_1D_TOKENIZER)")
def test_released_table_equals_the_yaml_files():
  yaml = pytest.importorskip("yaml")
  files = {"l32": "l32", "b64": "b64", "s128": "s128", "bl64_vq8k": "bl64_vq8k",
           "bl128_vq8k": "bl128_vq8k", "sl256_vq8k": "sl256_vq8k", "ll32_vae_c16": "ll32_vae_c16",
           "bl64_vae_c16": "bl64_vae_c16", "bl128_vae_c16": "bl128_vae_c16"}
  for short, stem in files.items():
    with open(os.path.join(REF, "configs", "infer", "TiTok", f"titok_{stem}.yaml")) as f:
      official = yaml.safe_load(f)
    assert T.from_official(official) == T.released(f"tokenizer_titok_{short}_imagenet"), short
    if "generator" in official["model"]:  # ${...} left unresolved, as in the HF config.json
      from jaxtok.convert import maskgit
      assert maskgit.from_official(official) == maskgit.released(
          f"generator_titok_{short}_imagenet"), short


def test_scanned_tokenizer_loads_the_official_weights():
  """A scan_layers TiTok takes the converter's per-layer names (fill_state stacks blocks.i.*) and
  reproduces the official tokens and images."""
  cfg, params = T.load(_path("titok_vq"), dict(CONFIGS["titok_vq"], scan_layers=True))
  model = api.build(cfg).model(params)
  io = _io("titok_vq")
  out = model.encode(jnp.asarray(io["images"]))
  np.testing.assert_array_equal(np.asarray(out.tokens), io["tokens"])
  assert _err(model.decode(jnp.asarray(io["tokens"])), io["decoded"]) < TOL


def test_stack_layers_stacks_complete_layer_sets_only():
  shapes = {"enc.blocks.w": (2, 3), "enc.other": (3,)}
  flat = {"enc.blocks.0.w": np.zeros(3), "enc.blocks.1.w": np.ones(3), "enc.other": np.ones(3)}
  out = common.stack_layers(flat, shapes)
  assert set(out) == {"enc.blocks.w", "enc.other"}
  np.testing.assert_array_equal(out["enc.blocks.w"], [[0, 0, 0], [1, 1, 1]])
  # A missing layer leaves the entries as they are, for check_keys to name.
  partial = {"enc.blocks.0.w": np.zeros(3), "enc.other": np.ones(3)}
  assert set(common.stack_layers(partial, shapes)) == set(partial)
  with pytest.raises(ValueError, match=r"missing keys \[enc.blocks.w\]; unexpected keys \[enc.blocks.0.w\]"):
    common.check_keys(shapes, common.stack_layers(partial, shapes))
