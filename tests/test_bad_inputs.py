"""Bad inputs get a clear error naming the argument, what was expected and what was given.

Checks on values run on concrete arrays at the facades (the tokenizer API, the quantizer
functions, the samplers' entry points, the converters, configs and tools). Inside jit the values
are unknown: there token ids are clipped (VQ) or wrapped (FSQ) as documented, and
`quantizers.base.checkify_indices` / `checkify.float_checks` turn them into checkify errors.

| bad input                                             | where                               | error                                           |
|-------------------------------------------------------|-------------------------------------|-------------------------------------------------|
| token id >= codebook size, or negative, in decode     | api.Tokenizer.decode (VQGAN, TiTok, | ValueError "tokens must be ids in [0, K) ...    |
|                                                       | FlexTok)                            | got <id> at index (b, k)"                       |
| out-of-range ids                                      | fsq / vq .indices_to_codes          | ValueError "indices must be ids in [0, K) ..."  |
| out-of-range ids inside jit                           | base.checkify_indices + checkify    | checkify error "tokens must be ids in [0, K)"   |
| NaN / inf in z                                        | vq, fsq, lfq, binary, rvq, rfsq     | ValueError "z must be finite, got N NaN/inf"    |
| NaN float tokens                                      | api.Tokenizer.decode (VAE tokens)   | ValueError "tokens must be finite"              |
| cfg_scale=nan / inf                                   | guidance.*, samplers (flow, maskgit,| ValueError "cfg_scale must be a finite number"  |
|                                                       | ...), FlexTok decode, generate opts |                                                 |
| parameters of another config                          | api encode / decode / reconstruct   | ValueError "params do not match ... '<path>'    |
|                                                       |                                     | has shape (...), expected (...)"                |
| decode(num_tokens=0 or -3)                            | api.Tokenizer.decode                | ValueError "num_tokens must be in [1, K']"      |
| --steps 0 (and head_steps, num_tokens < 1)            | eval.generate.options_from_config   | ValueError "steps must be an int >= 1"          |
|                                                       | (tools/sample.py's flags)           |                                                 |
| token file decoded with another model                 | eval.tokenize_cli.check_same_model  | ValueError "holds tokens of another model ...   |
|                                                       | (tools/tokenize_images.py --tokens) | differs ... in <field>: file .. vs model .."    |
| safetensors: negative offsets, negative dims, offsets | convert.common.read_checkpoint      | ValueError "<file>: tensor '<name>' ..."        |
| past the file, non-object entry, unknown dtype        |                                     |                                                 |
| malicious pickle                                      | convert.common.read_checkpoint      | ValueError (tests/convert/test_common.py, needs |
|                                                       |                                     | torch)                                          |
| generator config typo: size=Q, tokns=64, codebook=x   | jaxtok.configs.common.generator_arg | ValueError "unknown config argument 'tokns';    |
|                                                       |                                     | expected one of [...]" / "'size' must be one of"|
| --config configs/nope.py                              | eval.cli.parse / tools/train.py     | SystemExit "--config: config file               |
|                                                       |                                     | 'configs/nope.py' does not exist"               |
| official YAML config                                  | convert.common.config_arg           | accepted (was a raw JSONDecodeError)            |
| legacy TiTok dict without its pixel decoder           | convert.titok.infer_config          | ValueError "... not its MaskGIT-VQGAN pixel     |
|                                                       |                                     | decoder (missing [...])"                        |
| image_size disagreeing with the positional embedding  | convert.titok.infer_config          | ValueError "image_size 64 does not match"       |
| proxy-code head without legacy_reshape                | convert.titok.resolve_config / load | ValueError "needs legacy_reshape=True"          |
| RAR token order that is not a permutation             | generators.rar.RAR (concrete orders;| ValueError "orders must be a permutation of     |
|                                                       | tests/generators/test_rar.py)       | 0..N-1 per sample, got row b: [...]"            |
| config.repa.weight > 0 without a DINOv2 weights file  | losses.repa.settings / load_teacher | ValueError "needs config.repa.weights: the path |
| (or a path that does not exist)                       | (train step, loop; tests/losses/    | of an official DINOv2 weights file, e.g. ..."   |
|                                                       | test_repa.py)                       |                                                 |
| DINOv2 input whose size is not a multiple of 14       | nn.dinov2.DINOv2 (tests/convert/    | ValueError "... multiples of the patch size 14, |
|                                                       | test_dinov2.py)                     | got H x W"                                      |
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from jaxtok.convert import common as C
from jaxtok.convert import titok as T
from jaxtok.eval import cli, generate, tokenize_cli
from jaxtok.quantizers import base, binary, fsq, lfq, residual, vq
from jaxtok.samplers import flow, guidance, maskgit
from jaxtok.tokenizers import api

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "official")
VQGAN = dict(name="vqgan", image_size=16, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4,
             codebook_size=10, num_groups=4)
TITOK = dict(name="titok", image_size=32, patch_size=8, encoder_width=32, encoder_depth=2,
             encoder_heads=2, decoder_width=32, decoder_depth=2, decoder_heads=2, num_latent_tokens=6,
             token_size=4, codebook_size=16, use_l2_norm=True)
LEGACY = dict(TITOK, legacy_reshape=True, decoder_head="proxy_codes", pixel_ch=32,
              pixel_ch_mult=(1, 1, 1, 1), pixel_num_res_blocks=1, pixel_z_channels=8)


def _tok(cfg):
  # Facade checks run before anything is compiled: abstract parameters are enough to reach them.
  tok = api.build(cfg)
  return tok, tok.abstract_params()


# ---- tokens, parameters and num_tokens at the tokenizer facade


@pytest.mark.parametrize("cfg,vocab", [(VQGAN, 10), (TITOK, 16), (dict(name="flextok", size="tiny"), None)])
def test_decode_refuses_token_ids_outside_the_codebook(cfg, vocab):
  tok, params = _tok(cfg)
  vocab = vocab or tok.vocab_size
  k = tok.max_tokens
  assert tok.vocab_size == vocab
  for bad in (vocab, -1):
    tokens = jnp.zeros((2, k), jnp.int32).at[1, k - 1].set(bad)
    with pytest.raises(ValueError, match=rf"tokens must be ids in \[0, {vocab}\).*got {bad} at index \(1, {k - 1}\)"):
      tok.decode(params, tokens)


def test_parameters_of_another_config_are_refused_naming_the_path():
  tok, _ = _tok(TITOK)
  _, other = _tok(dict(TITOK, codebook_size=32))
  images = jnp.zeros((1, 32, 32, 3))
  for call in (lambda: tok.reconstruct(other, images), lambda: tok.encode(other, images),
               lambda: tok.decode(other, jnp.zeros((1, 6), jnp.int32))):
    with pytest.raises(ValueError, match=r"'codebook' has shape \(32, 4\), expected \(16, 4\)"):
      call()
  _, vqgan_params = _tok(VQGAN)
  with pytest.raises(ValueError, match="params do not match this tokenizer's config"):
    tok.reconstruct(vqgan_params, images)


def test_params_check_accepts_the_pure_dict_of_the_same_parameters():
  tok = api.build(VQGAN)
  params = tok.init(jax.random.key(0))
  api.check_params(params.to_pure_dict(), api.param_shapes(tok.abstract_params()))


@pytest.mark.parametrize("num_tokens", [0, -3])
def test_decode_num_tokens_must_be_positive(num_tokens):
  tok, params = _tok(TITOK)
  with pytest.raises(ValueError, match=r"num_tokens must be in \[1, 6\], got " + str(num_tokens)):
    tok.decode(params, jnp.zeros((1, 6), jnp.int32), num_tokens=num_tokens)


def test_decode_refuses_nan_continuous_tokens():
  tok, params = _tok(dict(TITOK, quantizer="vae"))
  with pytest.raises(ValueError, match="tokens must be finite"):
    tok.decode(params, jnp.full((1, 6, 4), jnp.nan))


# ---- quantizers


def test_indices_to_codes_refuse_out_of_range_ids():
  levels = (8, 5, 5)
  with pytest.raises(ValueError, match=r"indices must be ids in \[0, 200\).*got 200"):
    fsq.indices_to_codes(jnp.array([0, 200]), levels)
  with pytest.raises(ValueError, match=r"got -1 at index \(1,\)"):
    fsq.indices_to_codes(jnp.array([0, -1]), levels)
  state = vq.init_state(jax.random.key(0), 4, 3)
  with pytest.raises(ValueError, match=r"indices must be ids in \[0, 4\).*got 4"):
    vq.indices_to_codes(jnp.array([[4]]), state)


def test_out_of_range_ids_inside_jit_fail_through_checkify():
  from jax.experimental import checkify

  def decode(t):
    base.checkify_indices("tokens", t, 200)
    return fsq.indices_to_codes(t, (8, 5, 5))

  err, _ = checkify.checkify(jax.jit(decode))(jnp.array([3, 250]))
  with pytest.raises(Exception, match=r"tokens must be ids in \[0, 200\).*got 250"):
    err.throw()
  err, codes = checkify.checkify(jax.jit(decode))(jnp.array([3, 199]))
  err.throw()  # in range: no error
  assert codes.shape == (2, 3)


def test_quantizers_refuse_nan_inputs():
  z = jnp.zeros((2, 3)).at[1, 2].set(jnp.nan)
  calls = {
      "vq": lambda: vq.quantize(z, vq.init_state(jax.random.key(0), 4, 3)),
      "fsq": lambda: fsq.quantize(z, (5, 5, 5)),
      "lfq": lambda: lfq.quantize(z),
      "binary": lambda: binary.quantize(z),
      "rvq": lambda: residual.rvq_quantize(z, residual.init_states(jax.random.key(0), 2, 4, 3)),
      "rfsq": lambda: residual.rfsq_quantize(z, (5, 5, 5), 2),
  }
  for name, call in calls.items():
    with pytest.raises(ValueError, match=r"z must be finite, got 1 NaN/inf value\(s\) of 6, the first nan at index \(1, 2\)"):
      call()
    assert name  # (the loop names the quantizer in a failure's traceback)


# ---- guidance and samplers


@pytest.mark.parametrize("scale", [float("nan"), float("inf")])
def test_cfg_scale_must_be_finite(scale):
  c, u = jnp.ones((2, 3)), jnp.zeros((2, 3))
  for fn in (guidance.cfg_uncond_base, guidance.cfg_cond_base, guidance.cfg_instella):
    with pytest.raises(ValueError, match="cfg_scale must be a finite number"):
      fn(c, u, scale)
  with pytest.raises(ValueError, match="cfg_scale must be a finite number"):
    guidance.scale_at("linear", scale, 0.5)
  with pytest.raises(ValueError, match="cfg_scale must be a finite number"):
    flow.sample(lambda x, t, cond: x, jnp.zeros((1, 2)), None, steps=2, uncond=None, cfg_scale=scale)
  logits_fn = lambda tokens, cond: jnp.zeros(tokens.shape + (4,))
  with pytest.raises(ValueError, match="cfg_scale must be a finite number"):
    maskgit.sample(jax.random.key(0), logits_fn, jnp.full((1, 4), 4, jnp.int32), mask_id=4, steps=2,
                   cfg_scale=scale)
  with pytest.raises(ValueError, match="cfg_scale must be a finite number"):
    generate.options_from_config({"cfg_scale": 3.0}, cfg_scale=scale)


def test_flextok_decode_refuses_nan_cfg_scale():
  tok, params = _tok(dict(name="flextok", size="tiny"))
  with pytest.raises(ValueError, match="cfg_scale must be a finite number"):
    tok.decode(params, jnp.zeros((1, 2), jnp.int32), cfg_scale=float("nan"))


@pytest.mark.parametrize("key", ["steps", "head_steps", "head_steps_lower", "num_tokens"])
@pytest.mark.parametrize("value", [0, -2])
def test_sampling_counts_must_be_at_least_one(key, value):
  # tools/sample.py passes its flags here; 0 used to mean "the config's default".
  with pytest.raises(ValueError, match=rf"{key} must be an int >= 1 .*got {value}"):
    generate.options_from_config({"num_steps": 8}, **{key: value})
  assert generate.options_from_config({"num_steps": 8}, steps=None).steps == 8


# ---- files: token files, safetensors headers, configs


def test_token_file_of_another_model_is_refused():
  stored = {"config": np.asarray(json.dumps(dict(TITOK, codebook_size=32))),
            "checkpoint": np.asarray("runs/other")}
  with pytest.raises(ValueError, match=r"another model.*runs/other.*codebook_size: file 32 vs model 16"):
    tokenize_cli.check_same_model(stored, dict(TITOK), "t.npz")
  tokenize_cli.check_same_model({"config": np.asarray(json.dumps(TITOK))}, dict(TITOK), "t.npz")
  tokenize_cli.check_same_model({}, dict(TITOK), "t.npz")  # nothing recorded: nothing to compare


def _raw_safetensors(path, entries, body=b"\0" * 16):
  h = json.dumps(entries).encode()
  path.write_bytes(len(h).to_bytes(8, "little") + h + body)


@pytest.mark.parametrize("entry,match", [
    ({"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}, r"data_offsets must be \[start, end\]"),
    ({"dtype": "F32", "shape": [-2, 2], "data_offsets": [0, 16]}, r"shape must be a list of ints >= 0"),
    ({"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}, r"reach past the 16 bytes"),
    ("a string", r"header entry must be an object"),
    ({"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}, r"unsupported dtype 'Q7'"),
    ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, r"8 bytes for F32 \[3\]"),
])
def test_malformed_safetensors_headers_name_the_tensor(tmp_path, entry, match):
  _raw_safetensors(tmp_path / "w.safetensors", {"good": {"dtype": "F32", "shape": [2],
                                                          "data_offsets": [0, 8]}, "bad.weight": entry})
  with pytest.raises(ValueError, match=r"w\.safetensors: tensor 'bad\.weight'.*" + match):
    C.read_checkpoint(tmp_path / "w.safetensors")


@pytest.mark.parametrize("module,arg,match", [
    ("maskgit_titok", "size=Q", r"'size' must be one of \['B', 'S', 'tiny'\], got 'Q'"),
    ("maskgit_titok", "tiny,tokns=64", r"unknown config argument 'tokns'; expected one of .*'tokens'"),
    ("gpt_flextok", "codebook=x", r"'codebook' must be an int, got 'x'"),
    ("mar_vae", "codebook=16", r"unknown config argument 'codebook'; expected one of .*'token_dim'"),
    ("token_shuffle_vqgan", "tiny,shufle=2", r"unknown config argument 'shufle'; expected one of .*'shuffle'"),
    ("nar_vqgan", "grid_width=x", r"'grid_width' must be an int, got 'x'"),
    ("nar_vqgan", "tiny,shuffle=2", r"unknown config argument 'shuffle'; expected one of .*'grid_width'"),
])
def test_generator_config_typos_list_the_valid_arguments(module, arg, match):
  import importlib
  config = importlib.import_module(f"jaxtok.configs.{module}")
  with pytest.raises(ValueError, match=match):
    config.get_config(arg)


def test_missing_config_file_is_named():
  fv = flags.FlagValues()
  cli.define_config(fv, "config", "a config file")
  with pytest.raises(SystemExit, match=r"--config: config file 'configs/nope\.py' does not exist"):
    cli.parse(fv, ["tool", "--config=configs/nope.py:tiny"])
  with pytest.raises(SystemExit, match="does not exist"):
    cli.check_config_files(["tool", "--config", "configs/nope.py"], ["config"])


# ---- the official TiTok converter (fixtures in tests/fixtures/official)


def _released_flat(name):
  """{official key: zeros of its shape} of a released model (release_shapes.json.gz): the tiny
  .safetensors fixtures have width 32, which infer_config refuses as no released ViT size."""
  import gzip
  with gzip.open(os.path.join(FIXTURES, "release_shapes.json.gz"), "rt") as f:
    shapes = json.load(f)[name]
  return {k: np.broadcast_to(np.float32(0), tuple(s)) for k, s in shapes.items()}


def test_official_yaml_configs_are_read(tmp_path):
  name = "yucornetto/tokenizer_titok_l32_imagenet"
  import yaml
  (tmp_path / "titok_l32.yaml").write_text(yaml.safe_dump(T.OFFICIAL[name]))
  assert T.resolve_config(str(tmp_path / "titok_l32.yaml")) == T.RELEASED[name]
  # A jaxtok config as YAML converts the fixture.
  (tmp_path / "tiny.yml").write_text(yaml.safe_dump(dict(TITOK, name="titok")))
  cfg, _ = T.load(os.path.join(FIXTURES, "titok_vq.safetensors"), str(tmp_path / "tiny.yml"))
  assert cfg["codebook_size"] == 16
  (tmp_path / "broken.yaml").write_text("model: [unclosed")
  with pytest.raises(ValueError, match="not valid YAML"):
    T.resolve_config(str(tmp_path / "broken.yaml"))


def test_legacy_dict_without_pixel_decoder_is_named():
  flat = _released_flat("yucornetto/tokenizer_titok_s128_imagenet")
  assert T.infer_config(flat)["decoder_head"] == "proxy_codes"
  flat = {k: v for k, v in flat.items() if not k.startswith("pixel_")}
  with pytest.raises(ValueError, match=r"legacy proxy-code head .* not its MaskGIT-VQGAN pixel decoder"):
    T.infer_config(flat)


def test_image_size_is_read_off_the_positional_embedding():
  flat = _released_flat("yucornetto/tokenizer_titok_bl64_vq8k_imagenet")
  assert flat["encoder.positional_embedding"].shape[0] == 257  # 16x16 patches of 16 px + class
  assert T.infer_config(flat)["image_size"] == 256
  # A 512 px model of the same layout: 32x32 patches.
  flat = dict(flat, **{f"{p}.positional_embedding": np.zeros((1025, w), np.float32)
                       for p, w in (("encoder", 768), ("decoder", 1024))})
  assert T.infer_config(flat)["image_size"] == 512
  assert T.infer_config(flat, image_size=512)["image_size"] == 512
  with pytest.raises(ValueError, match="image_size 256 does not match.*image_size 512"):
    T.infer_config(flat, image_size=256)


def test_proxy_code_head_without_legacy_reshape_is_refused():
  with pytest.raises(ValueError, match="needs legacy_reshape=True"):
    T.load(os.path.join(FIXTURES, "titok_legacy.safetensors"), dict(LEGACY, legacy_reshape=False))
  cfg = T.resolve_config(dict(LEGACY))  # with the legacy reshape it is accepted
  assert cfg["legacy_reshape"] is True
