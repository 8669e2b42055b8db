"""Every config parses, its tiny variant builds, One-D-Piece and TiTok tiny train 2 steps, bad values fail."""
import importlib
import json
import os

import jax
import numpy as np
import pytest

from jaxtok.configs import common
from jaxtok.tokenizers import api
from jaxtok.train import loop

NAMES = ["titok", "onedpiece", "vqgan", "vae", "flextok", "dar"]


def _module_exists(name):
  try:
    api.model_module(name)
    return True
  except ImportError:
    return False


@pytest.mark.parametrize("name", NAMES)
def test_tiny_variant_builds(name):
  c = importlib.import_module(f"jaxtok.configs.{name}").get_config("tiny")
  assert c.model.name == name and c.total_steps <= 8 and c.data.image_size == 16
  loop.validate_config(c)
  if not _module_exists(name):
    pytest.skip(f"jaxtok.tokenizers module for {name!r} is not in this checkout yet")
  tok = api.build(c.model)
  leaves = jax.tree.leaves(tok.abstract_params())
  assert leaves and sum(int(np.prod(x.shape)) for x in leaves) < 2_000_000


def test_full_size_configs_parse():
  titok = importlib.import_module("jaxtok.configs.titok")
  c = titok.get_config("size=B,tokens=64,recipe=two_stage")
  assert c.model.encoder_size == "B" and c.model.num_latent_tokens == 64
  assert c.model.decoder_head == "proxy_codes" and c.loss.proxy == 1.0
  c = importlib.import_module("jaxtok.configs.onedpiece").get_config("size=S,tokens=256")
  assert c.model.name == "onedpiece" and c.eval.token_counts == [32, 64, 128, 256]
  main = importlib.import_module("jaxtok.configs.onedpiece").get_config("main")
  assert main.model.num_latent_tokens == 16 and main.eval.token_counts == [2, 4, 8, 16]
  loop.validate_config(main)


def test_bad_values_raise():
  titok = importlib.import_module("jaxtok.configs.titok")
  with pytest.raises(ValueError, match="unknown config argument 'sise'"):
    titok.get_config("sise=S")
  with pytest.raises(ValueError, match="size must be one of"):
    titok.get_config("size=XL")
  with pytest.raises(ValueError, match="'tokens' must be an int"):
    titok.get_config("tokens=many")
  with pytest.raises(ValueError, match="'tiny' must be true/false"):
    common.parse_arg("tiny=maybe", tiny=False)
  c = titok.get_config("tiny")
  c.total_steps = 0
  with pytest.raises(ValueError, match="config.total_steps"):
    loop.validate_config(c)
  c = titok.get_config("tiny")
  c.model.name = "resnet"
  with pytest.raises(ValueError, match="config.model.name"):
    loop.validate_config(c)
  c = titok.get_config("tiny")
  c.data.batch_size = 6  # 8 devices
  with pytest.raises(ValueError, match="batch_size"):
    loop.validate_config(c)


@pytest.mark.slow
@pytest.mark.parametrize("name,arg", [("onedpiece", "tiny"), ("titok", "tiny"),
                                      ("titok", "tiny,recipe=two_stage")])
def test_tiny_trains_two_steps(name, arg, tmp_path):
  c = importlib.import_module(f"jaxtok.configs.{name}").get_config(arg)
  c.total_steps = 2
  c.final_eval = name == "onedpiece"
  c.eval.token_counts = [2, 8] if name == "onedpiece" else [8]
  report = loop.train(c, str(tmp_path), show_progress=False)
  assert report["step"] == 2
  lines = [json.loads(l) for l in open(tmp_path / "tb" / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [1, 2] and all(np.isfinite(l["loss"]) for l in lines)
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tb"))
  if "two_stage" in arg:
    # Stage 1: cross-entropy against the teacher's proxy codes, no pixel loss.
    assert "loss/proxy_ce" in lines[0] and "loss/l2" not in lines[0]
    assert lines[0]["loss/proxy_ce"] > 0
  if name == "onedpiece":
    assert "model/kept_tokens" in lines[0]
    final = json.load(open(tmp_path / "final_metrics.json"))
    assert list(final["per_token_count"]) == ["2", "8"]
    assert os.path.getsize(tmp_path / "final_grid.png") > 0


@pytest.mark.parametrize("name", ["titok", "vqgan"])
def test_gan_flag_adds_discriminator(name):
  from flax import nnx
  from jaxtok.nn import discriminator
  mod = importlib.import_module(f"jaxtok.configs.{name}")
  assert mod.get_config("").get("disc") is None and mod.get_config("").loss.gan == 0.0
  full = mod.get_config("gan")
  # Released recipes: TiTok stage 2 weight 0.01, VQGAN 0.1; both from step 20k with LeCAM 0.001.
  assert full.loss.gan == (0.01 if name == "titok" else 0.1)
  assert full.loss.gan_start == full.loss.disc_start == 20_000 and full.loss.lecam == 0.001
  assert full.disc_optim.lr == 1e-4 and full.disc.channels == 64
  loop.validate_config(full)
  tiny = mod.get_config("tiny,gan")
  loop.validate_config(tiny)
  d = discriminator.make_discriminator(tiny.disc, rngs=nnx.Rngs(0))
  logits = d(np.zeros((2, 16, 16, 3), np.float32))
  assert logits.ndim == 3 and logits.shape[0] == 2
  if name == "titok":
    with pytest.raises(ValueError, match="gan applies to the single-stage recipe"):
      mod.get_config("recipe=two_stage,gan")


GENERATORS = ["maskgit_titok", "gpt_flextok", "mar_vae", "token_shuffle_vqgan", "nar_vqgan", "rar",
              "tokenbridge_vae", "cubid_vae"]
# The fields a run config has whether it trains a tokenizer or a generator (one dialect).
SHARED = {"seed", "total_steps", "log_every", "eval_every", "ckpt_every", "keep_checkpoints",
          "on_config_change", "ema_decay", "optim", "mesh", "sharding_rules", "model", "data"}


# Generator configs whose arguments differ (text conditions, RVQ depth, bits, ...): the dialect
# test covers them too.
OTHER_GENERATORS = ["any_order", "binary_ar", "binary_diffusion", "ecar_vae", "himar_vae", "xar_vae",
                    "resgen", "maskgen", "maskgen_kl", "flowtok", "gpt_dar", "codec_prior"]


@pytest.mark.parametrize("name", GENERATORS + OTHER_GENERATORS + NAMES)
def test_one_dialect_for_tokenizer_and_generator_configs(name):
  c = importlib.import_module(f"jaxtok.configs.{name}").get_config("tiny")
  assert SHARED <= set(c.keys()), sorted(SHARED - set(c.keys()))
  assert {"generator", "batch_size", "checkpoint_every"}.isdisjoint(c.keys())
  assert isinstance(c.data.batch_size, int) and isinstance(c.model.name, str)
  assert set(common.run_config().optim.keys()) <= set(c.optim.keys())


@pytest.mark.parametrize("name", GENERATORS)
def test_generator_config_counts_are_typed(name):
  from jaxtok.train import generator
  mod = importlib.import_module(f"jaxtok.configs.{name}")
  c = mod.get_config("tiny,tokens=12,classes=3")
  assert c.model.seq_len == 12 and c.model.num_classes == 3
  generator.model_config(c)
  with pytest.raises(ValueError, match="'tokens' must be an int"):
    mod.get_config("tokens=12.5")


def test_generator_trainer_refuses_the_retired_dialect():
  import ml_collections
  from jaxtok.train import generator
  c = importlib.import_module("jaxtok.configs.maskgit_titok").get_config("tiny")
  old = ml_collections.ConfigDict(c.to_dict())
  old.generator = old.model.to_dict()
  del old["model"]
  old.checkpoint_every = 2
  with pytest.raises(ValueError, match=r"retired field\(s\) \['generator', 'checkpoint_every'\].*"
                                       r"config.model.*config.data.batch_size.*config.ckpt_every"):
    generator.model_config(old)
  with pytest.raises(ValueError, match=r"retired"):
    generator.build(old, 4)


@pytest.mark.parametrize("arg", ["tiny,recipe=two_stage,stage=2", "tiny,stage=posttrain",
                                 "tiny,recipe=two_stage,stage=posttrain", "tiny,stage=posttrain,gan",
                                 "tiny,stage=posttrain,quantizer=fsq"])
def test_stage2_and_posttrain_configs_build_and_freeze_existing_parameters(arg):
  from jaxtok.train import optim, warm_start
  c = importlib.import_module("jaxtok.configs.titok").get_config(arg)
  assert c.init_from.path == "" and warm_start.settings(c.init_from) is None
  with pytest.raises(ValueError, match=r"would freeze randomly initialised weights"):
    loop.validate_config(c)
  c.init_from.path = "runs/stage1"
  loop.validate_config(c)
  assert c.loss.quantizer == 0.0 and c.loss.proxy == 0.0 and c.loss.l2 == 1.0
  params = api.build(c.model).abstract_params()
  optim.check_frozen_patterns(params, c.optim.frozen_patterns)  # each pattern matches a parameter
  frozen = optim.frozen_mask(params, c.optim.frozen_patterns)
  names = {optim.path_to_str(p).split("/")[0]: f for p, f in jax.tree_util.tree_flatten_with_path(frozen)[0]}
  assert names["encoder"] and names["latent_tokens"] and not names["decoder"]
  assert names.get("codebook", "fsq" in arg)  # FSQ has no codebook parameter
  if "pixel_decoder" in names:  # the release trains pixel_quantize and pixel_decoder in stage 2
    assert not names["pixel_decoder"] and not names["pixel_codebook"]
  if "posttrain" in arg:
    assert c.loss.perturb.beta == 1.0 and c.loss.perturb.alpha == 0.3


def test_stage2_full_config_is_the_released_recipe():
  c = importlib.import_module("jaxtok.configs.titok").get_config("size=B,tokens=64,recipe=two_stage,stage=2")
  # bytedance/1d-tokenizer configs/training/TiTok/stage2/titok_b64.yaml
  assert c.total_steps == 500_000 and c.model.commitment_cost == 0.0
  assert (c.optim.lr, c.optim.b1, c.optim.b2, c.optim.wd, c.optim.warmup_steps, c.optim.end_lr) == (
      1e-4, 0.9, 0.999, 1e-4, 5_000, 1e-5)
  assert (c.loss.gan, c.loss.gan_start, c.loss.lecam, c.disc_optim.lr, c.disc_optim.b2) == (
      0.01, 20_000, 0.001, 1e-4, 0.999)
  assert c.ema_decay == 0.999 and c.model.decoder_head == "proxy_codes"
  c.init_from.path = "runs/stage1"
  loop.validate_config(c)


def test_stage_bad_values_raise():
  titok = importlib.import_module("jaxtok.configs.titok")
  with pytest.raises(ValueError, match=r"stage must be one of \('1', '2', 'posttrain'\), got '3'"):
    titok.get_config("stage=3")
  with pytest.raises(ValueError, match=r"stage=2 is the second stage of recipe=two_stage, got recipe='single'"):
    titok.get_config("stage=2")
  with pytest.raises(ValueError, match=r"quantizer must be 'vq' or 'fsq', got 'lfq'"):
    titok.get_config("stage=posttrain,quantizer=lfq")
  c = titok.get_config("tiny,recipe=two_stage,stage=2")
  c.init_from.update(path="runs/s1", step=-5)
  with pytest.raises(ValueError, match=r"config.init_from.step must be -1"):
    loop.validate_config(c)
