"""Converted released generators end to end: official tokenizer + official generator fixtures ->
sampling with the released procedures -> the tokenizer's decoding -> an image grid, through the
public functions (jaxtok.convert, jaxtok.tokenizers.api, jaxtok.eval.generate.make_sampler) and once
through tools/convert.py + tools/sample.py on the converted directories.

Pairs (tests/fixtures/official, see README.md there):
  TiTok  titok_vq (6 tokens, 16 codes) + maskgit_imagebert (seq_len 6, 16 codes): the counts match;
         sampled with the released TiTok MaskGIT procedure (preset titok_b64: 8 steps, linear
         guidance 3.0, randomize_temperature 11, softmax temperature annealing).
  RAR    maskgit_vqgan (32 codes) + rar_tiny (16 tokens, 32 codes): the VQGAN fixture was made at
         16 px with one downsampling (ch_mult (2, 1)), a grid of 8 x 8 = 64 tokens, not 16. It is
         fully convolutional, so the same weights built at image_size 8 have a 4 x 4 grid of 16
         tokens and decode RAR's tokens to 8 x 8 images. RAR samples in raster order with its KV
         cache and the power-cosine guidance schedule (RAR-B's released temperature 1.0, scale 16,
         power 2.75: configs/rar.py:size=B's sampling block).
"""
import importlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok import convert
from jaxtok.configs import rar as rar_configs
from jaxtok.convert import common
from jaxtok.convert import vqgan as vqgan_convert
from jaxtok.eval import generate
from jaxtok.eval import images as img_lib
from jaxtok.tokenizers import api
from tests.convert.test_maskgit import CONFIGS as MASKGIT_CONFIGS
from tests.convert.test_rar import TINY as RAR_CONFIG
from tests.convert.test_tool import TINY as TITOK_CONFIG
from tests.convert.test_tool import _run_tool as run_convert_tool
from tests.tools.conftest import load_tool

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "official")
IMAGEBERT_CONFIG = MASKGIT_CONFIGS["maskgit_imagebert"]
# The VQGAN fixture at 8 px: its 4 x 4 grid holds RAR's 16 tokens (see the module doc).
VQGAN_CONFIG = dict(name="vqgan", image_size=8, ch=32, ch_mult=(2, 1), num_res_blocks=1,
                    z_channels=8, codebook_size=32, num_groups=32)
LABELS = jnp.asarray([0, 3, 7, -1], jnp.int32)  # -1: unconditional


def _fixture(name):
  return os.path.join(FIXTURES, f"{name}.safetensors")


def _pipeline(tokenizer_kind, tokenizer_name, tokenizer_config, generator_kind, generator_name,
              generator_config, opts):
  """(tokenizer, generator config, `sample(key) -> (tokens, uint8 grid)`) from two official files
  (kinds as `jaxtok.convert.convert` names them)."""
  tcfg, tparams = convert.convert(tokenizer_kind, _fixture(tokenizer_name), tokenizer_config)
  tokenizer = api.build(tcfg)
  gcfg, gparams = convert.convert(generator_kind, _fixture(generator_name), generator_config)
  converter = importlib.import_module(f"jaxtok.convert.{generator_kind}")
  assert gcfg["seq_len"] == tokenizer.max_tokens
  assert gcfg["codebook_size"] == tokenizer.vocab_size
  sampler = generate.make_sampler(gcfg["name"], nnx.graphdef(converter.build(gcfg, gparams)),
                                  gparams, opts)

  def sample(key):
    tokens = sampler(key, LABELS)
    pixels = np.asarray(tokenizer.decode(tparams, tokens))
    assert np.isfinite(pixels).all()
    return np.asarray(tokens), img_lib.grid(img_lib.to_uint8(pixels))

  return tokenizer, gcfg, sample


def _check_grids(sample, *, seq_len, codebook_size, image_size):
  tokens, grid = sample(jax.random.key(0))
  assert tokens.shape == (4, seq_len) and tokens.dtype == np.int32
  assert 0 <= tokens.min() and tokens.max() < codebook_size  # no mask / condition id left
  side = 2 * (image_size + 2) + 2  # 4 images in 2 x 2 with 2-pixel gaps
  assert grid.shape == (side, side, 3) and grid.dtype == np.uint8
  assert grid.std() > 0  # images, not a blank canvas
  again, grid_again = sample(jax.random.key(0))
  np.testing.assert_array_equal(again, tokens)
  np.testing.assert_array_equal(grid_again, grid)
  other, grid_other = sample(jax.random.key(1))
  assert (other != tokens).any() and (grid_other != grid).any()
  return tokens, grid


def test_titok_vq_and_its_maskgit_generator_sample_with_the_released_procedure():
  opts = generate.Options(mode="titok", preset="titok_b64")
  assert opts.titok_settings()["guidance_scale"] == 3.0  # guided (a class-conditional generator)
  tokenizer, gcfg, sample = _pipeline("titok", "titok_vq", TITOK_CONFIG, "maskgit",
                                      "maskgit_imagebert", IMAGEBERT_CONFIG, opts)
  assert gcfg["name"] == "maskgit_official" and tokenizer.max_tokens == 6
  tokens, _ = _check_grids(sample, seq_len=6, codebook_size=16, image_size=32)
  # Guidance reaches the model: the random fixture's class moves its logits by < 5e-4, too little to
  # show at the preset's scale 3 (its tokens equal unguided ones), but a scale of 1e4 changes them.
  _, _, strong = _pipeline("titok", "titok_vq", TITOK_CONFIG, "maskgit", "maskgit_imagebert",
                           IMAGEBERT_CONFIG, generate.Options(mode="titok", preset="titok_b64",
                                                              guidance_scale=1e4))
  assert (strong(jax.random.key(0))[0] != tokens).any()


def test_rar_with_kv_cache_and_power_cosine_guidance_decodes_with_the_maskgit_vqgan():
  # The fixture's own grid is 8 x 8 = 64 tokens: RAR's 16 are refused at that size.
  flat, _ = common.read_checkpoint(_fixture("maskgit_vqgan"))
  native = api.build(vqgan_convert.infer_config(flat, image_size=16))
  assert native.max_tokens == 64
  opts = generate.options_from_config(rar_configs.get_config("size=B").sampling)
  assert (opts.temperature, opts.cfg_scale, opts.cfg_schedule, opts.cfg_power) == (
      1.0, 16.0, "power-cosine", 2.75)
  tokenizer, gcfg, sample = _pipeline("vqgan", "maskgit_vqgan", VQGAN_CONFIG, "rar",
                                      "rar_tiny", RAR_CONFIG, opts)
  assert gcfg["name"] == "rar" and tokenizer.max_tokens == 16
  tokens, _ = _check_grids(sample, seq_len=16, codebook_size=32, image_size=8)
  _, native_params = convert.convert("vqgan", _fixture("maskgit_vqgan"), dict(VQGAN_CONFIG, image_size=16))
  with pytest.raises(ValueError, match=r"full grid"):
    native.decode(native_params, jnp.asarray(tokens))


def test_converted_directories_through_tools_convert_and_sample(tmp_path):
  """tools/convert.py writes both models of each pair; tools/sample.py takes the converted generator
  as --workdir and the converted tokenizer as --tokenizer_checkpoint, and its tokens are the library
  sampler's for the tool's key (fold_in(key(seed), batch 0))."""
  dirs = {}
  for kind, name, cfg in (("titok", "titok_vq", TITOK_CONFIG),
                          ("maskgit", "maskgit_imagebert", IMAGEBERT_CONFIG),
                          ("vqgan", "maskgit_vqgan", VQGAN_CONFIG), ("rar", "rar_tiny", RAR_CONFIG)):
    dirs[name] = str(tmp_path / name)
    run_convert_tool("--model", kind, "--config", json.dumps(cfg), "--weights", _fixture(name),
                     "--out", dirs[name])
  sample_tool = load_tool("sample")
  runs = {
      "maskgit_imagebert": ("titok_vq", 32, ["--mode=titok", "--preset=titok_b64"]),
      "rar_tiny": ("maskgit_vqgan", 8, ["--config=" + os.path.join("configs", "rar.py") + ":size=B"]),
  }
  for generator, (tokenizer, size, extra) in runs.items():
    out = str(tmp_path / f"samples_{generator}")
    res = sample_tool.main(["sample", f"--workdir={dirs[generator]}", f"--out={out}",
                            f"--tokenizer_checkpoint={dirs[tokenizer]}", "--num_samples=4",
                            "--batch_size=4", "--labels=0,3,7,-1", "--seed=0"] + extra)
    cfg, graphdef, params = convert.load_converted_generator(dirs[generator])
    with np.load(os.path.join(out, "tokens.npz")) as f:
      opts = generate.Options(**json.loads(str(f["options"])))
      assert str(f["generator"]) == cfg["name"]
    want = generate.make_sampler(cfg["name"], graphdef, params, opts)(
        jax.random.fold_in(jax.random.key(0), 0), LABELS)
    np.testing.assert_array_equal(res["tokens"], want)
    assert res["images"].shape == (4, size, size, 3) and res["images"].dtype == np.uint8
    assert os.path.exists(os.path.join(out, "grid.png"))
    if generator == "rar_tiny":  # --config gave RAR-B's released sampling settings
      assert (opts.cfg_scale, opts.cfg_schedule, opts.cfg_power) == (16.0, "power-cosine", 2.75)
    else:
      assert opts.mode == "titok" and opts.preset == "titok_b64"
  with pytest.raises(ValueError, match=r"a tokenizer\), not a generator"):
    convert.load_converted_generator(dirs["titok_vq"])
  # A converted generator records no tokenizer: the tool asks for one.
  with pytest.raises(ValueError, match="--tokenizer_checkpoint is required"):
    sample_tool.main(["sample", f"--workdir={dirs['rar_tiny']}", f"--out={tmp_path / 'x'}"])
