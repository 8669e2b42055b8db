"""E-CAR end to end through the tools: the tiny config trains on a continuous token dataset with
falling loss (tools/train_generator.py), then samples and decodes with a tiny VAE (tools/sample.py)."""
import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.data import tokens as token_data
from tests.tools.conftest import load_tool, random_like, save_train_checkpoint


@pytest.mark.slow
def test_ecar_trains_with_falling_loss_then_samples(tmp_path):
  from jaxtok.configs import vae
  from jaxtok.tokenizers import api
  rng = np.random.default_rng(0)
  # 4 x 4 grids of 4-dim tokens: one smooth pattern per class plus a little noise.
  patterns = rng.normal(size=(2, 4, 4, 4)).astype(np.float32)
  labels = np.arange(24) % 2
  toks = patterns[labels] + 0.05 * rng.normal(size=(24, 4, 4, 4))
  data = str(tmp_path / "tokens")
  token_data.write_token_dataset(data, toks.reshape(24, 16, 4), labels)
  train, sample = load_tool("train_generator"), load_tool("sample")
  workdir = str(tmp_path / "ecar")
  cfg = "--config=" + os.path.join("configs", "ecar_vae.py") + ":tiny"
  over = ["--config.model.num_classes=2", "--config.total_steps=16", "--config.ckpt_every=16",
          "--config.optim.lr=1e-2", "--config.log_every=1"]
  args = ["train_generator", cfg, f"--workdir={workdir}", f"--data={data}"] + over
  first = train.main(args + ["--stop_at=1"])
  last = train.main(args)
  assert np.isfinite(last["loss"]) and last["loss"] < first["loss"] - 0.1, (first, last)

  tok_cfg = vae.get_config("tiny")
  tok_cfg.model.num_latent_tokens = 16   # the 4 x 4 grid (the tiny preset has 8)
  tokenizer = api.build(tok_cfg.model)
  raw = random_like(tokenizer.abstract_params(), seed=2)
  tok_dir = str(tmp_path / "vae")
  save_train_checkpoint(tok_dir, {"step": jnp.int32(1), "params": raw}, tok_cfg)
  res = sample.main(["sample", cfg, f"--workdir={workdir}", "--num_samples=2", "--labels=0,1",
                     f"--tokenizer_checkpoint={tok_dir}", "--head_steps=3", "--head_steps_lower=2",
                     "--cfg_scale=2.0"] + over[:1])
  assert res["tokens"].shape == (2, 16, 4) and res["tokens"].dtype == np.float32
  assert np.all(np.isfinite(res["tokens"]))
  np.testing.assert_array_equal(res["images"], np.round(np.clip(np.asarray(
      tokenizer.decode(raw, jnp.asarray(res["tokens"]))), 0, 1) * 255).astype(np.uint8))
