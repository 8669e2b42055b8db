"""GPSToken's generator through the tools: tools/pretokenize.py on a tiny GPSToken run writes the
initial layouts and statistics, tools/train_generator.py trains configs/gpstoken_gen.py:tiny on them
with falling loss, tools/sample.py draws layouts from the bank and decodes images."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tools.conftest import load_tool, random_like, save_train_checkpoint


@pytest.fixture(scope="module")
def gps_tokens(tmp_path_factory):
  """(token dataset dir, its labels) of 16 photo crops through configs/gpstoken.py:tiny (random
  weights: 8 Gaussians, 4 texture channels, 16 px)."""
  from jaxtok.configs import gpstoken
  from jaxtok.tokenizers import api
  config = gpstoken.get_config("tiny")
  params = random_like(api.build(config.model).abstract_params(), seed=0, scale=0.2)
  workdir = str(tmp_path_factory.mktemp("gpstoken_run"))
  save_train_checkpoint(workdir, {"step": jnp.int32(1), "params": params}, config)
  out = str(tmp_path_factory.mktemp("data") / "gps_tokens")
  load_tool("pretokenize").main(["pretokenize", f"--checkpoint={workdir}", f"--out={out}",
                                 "--source=photos", "--num_examples=16", "--batch_size=8"])
  return out, np.load(os.path.join(out, "labels.npy"))


@pytest.mark.slow
def test_pretokenize_train_sample(gps_tokens, tmp_path):
  from jaxtok.generators import gpstoken_gen
  data, labels = gps_tokens
  tokens = np.load(os.path.join(data, "tokens.npy"))
  layouts = np.load(os.path.join(data, "layouts.npy"))
  with open(os.path.join(data, "meta.json")) as f:
    stats = json.load(f)[gpstoken_gen.STATS_KEY]
  assert tokens.shape == (16, 8, 9) and layouts.shape == (16, 8, 5)
  # The stored statistics are those of the residual tokens (g - g0, f) of the stored arrays.
  r = np.concatenate([tokens[..., :5] - layouts, tokens[..., 5:]], -1).reshape(-1, 9)
  np.testing.assert_allclose(stats["mean"], r.mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["std"], np.maximum(r.std(0), 1e-6), rtol=1e-4)
  # Initial layouts: sigma = 2/3 of a region's extent (in (0, 2/3]), rho 0, means inside [-1, 1].
  assert (layouts[..., :2] > 0).all() and (layouts[..., :2] <= 2 / 3 + 1e-6).all()
  assert (layouts[..., 2] == 0).all() and (np.abs(layouts[..., 3:]) <= 1).all()

  train, sample = load_tool("train_generator"), load_tool("sample")
  classes = int(labels.max()) + 1
  workdir = str(tmp_path / "gen")
  cfg = "--config=" + os.path.join("configs", "gpstoken_gen.py") + ":tiny"
  over = [f"--config.model.num_classes={classes}"]
  args = ["train_generator", cfg, f"--workdir={workdir}", f"--data={data}",
          "--config.total_steps=24", "--config.ckpt_every=24", "--config.optim.lr=1e-2"] + over
  first = train.main(args + ["--stop_at=1"])
  last = train.main(args)
  assert np.isfinite(last["loss"]) and last["loss"] < first["loss"] - 0.1, (first, last)
  res = sample.main(["sample", cfg, f"--workdir={workdir}", f"--out={tmp_path / 'samples'}",
                     "--num_samples=3", "--batch_size=2", f"--labels={labels[0]},-1",
                     "--steps=4", "--cfg_scale=1.5"] + over)
  assert res["tokens"].shape == (3, 8, 9) and res["tokens"].dtype == np.float32
  assert np.isfinite(res["tokens"]).all()
  # The release's clamps: sigmas in [1e-5, 1 - 1e-5], rho in (-1, 1).
  assert (res["tokens"][..., :2] >= 1e-5).all() and (res["tokens"][..., :2] <= 1 - 1e-5).all()
  assert (np.abs(res["tokens"][..., 2]) < 1).all()
  assert res["images"].shape == (3, 16, 16, 3) and res["images"].dtype == np.uint8
  assert os.path.exists(tmp_path / "samples" / "images" / "00002.png")
