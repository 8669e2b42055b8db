"""xAR and Hi-MAR through the tools: tools/train_generator.py on a continuous token dataset (loss at
step 1, then resumed to step 16: lower), then tools/sample.py decoding with a tiny VAE."""
import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.data import tokens as token_data
from tests.tools.conftest import load_tool, random_like, save_train_checkpoint


@pytest.fixture(scope="module")
def vae_and_tokens(tmp_path_factory):
  """(tiny VAE run dir, its tokenizer, raw params, a float token dataset [24, 8, 4]): the tokens are
  two fixed patterns (one per class) plus a little noise, so a generator's loss can fall fast."""
  from jaxtok.configs import vae
  from jaxtok.tokenizers import api
  root = tmp_path_factory.mktemp("continuous")
  tok_cfg = vae.get_config("tiny")
  tokenizer = api.build(tok_cfg.model)
  tok_dir = str(root / "vae")
  raw = random_like(tokenizer.abstract_params(), seed=2)
  save_train_checkpoint(tok_dir, {"step": jnp.int32(1), "params": raw}, tok_cfg)
  rng = np.random.default_rng(0)
  patterns = rng.normal(size=(2, 8, 4)) * 2.0
  labels = np.arange(24) % 2
  tokens = patterns[labels] + 0.05 * rng.normal(size=(24, 8, 4))
  data = str(root / "tokens")
  token_data.write_token_dataset(data, tokens.astype(np.float32), labels)
  return tok_dir, tokenizer, raw, data


def _train_then_sample(tmp_path, vae_and_tokens, config_arg, sample_flags):
  tok_dir, tokenizer, raw, data = vae_and_tokens
  train, sample = load_tool("train_generator"), load_tool("sample")
  workdir = str(tmp_path / "run")
  cfg = "--config=" + os.path.join("configs", config_arg)
  over = ["--config.model.num_classes=2", "--config.total_steps=16", "--config.ckpt_every=16",
          "--config.optim.lr=1e-2"]
  args = ["train_generator", cfg, f"--workdir={workdir}", f"--data={data}"] + over
  first = train.main(args + ["--stop_at=1"])
  last = train.main(args)
  assert np.isfinite(last["loss"]) and last["loss"] < first["loss"] - 0.1, (first, last)
  res = sample.main(["sample", cfg, f"--workdir={workdir}", f"--out={tmp_path / 'samples'}",
                     "--num_samples=3", "--batch_size=3", "--labels=0,1", "--cfg_scale=2.0",
                     f"--tokenizer_checkpoint={tok_dir}"] + sample_flags + over[:1])
  assert res["tokens"].shape == (3, 8, 4) and res["tokens"].dtype == np.float32
  assert np.all(np.isfinite(res["tokens"]))
  np.testing.assert_array_equal(res["images"], np.round(np.clip(np.asarray(
      tokenizer.decode(raw, jnp.asarray(res["tokens"]))), 0, 1) * 255).astype(np.uint8))
  return res


@pytest.mark.slow
def test_xar_trains_with_falling_loss_then_samples(tmp_path, vae_and_tokens):
  _train_then_sample(tmp_path, vae_and_tokens, "xar_vae.py:tiny,entity=cell", ["--steps=3"])


@pytest.mark.slow
def test_himar_trains_with_falling_loss_then_samples(tmp_path, vae_and_tokens):
  _train_then_sample(tmp_path, vae_and_tokens, "himar_vae.py:tiny",
                     ["--steps=3", "--head_steps=3", "--head_steps_lower=2"])
