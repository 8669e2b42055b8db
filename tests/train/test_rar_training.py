"""RAR trains through the real entry point (tools/train_generator.py, configs/rar.py:tiny): the loss is
finite and falls, the random-order chance follows the anneal by the run's step, and the config's
presets are the released sizes."""
import os

import numpy as np
import pytest

from jaxtok.configs import rar as rar_config
from jaxtok.data import tokens as token_data
from tests.tools.conftest import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _dataset(tmp_path):
  """32 examples of 8 tokens (16 codes) that the class determines: learnable in a few steps."""
  labels = np.arange(32) % 2
  tokens = np.where(labels[:, None] == 0, np.arange(8), 15 - np.arange(8)).astype(np.int32)
  path = str(tmp_path / "tokens")
  token_data.write_token_dataset(path, tokens, labels)
  return path


def test_tiny_rar_trains_through_train_generator(tmp_path):
  train = load_tool("train_generator")
  args = ["train_generator", "--config=" + os.path.join(ROOT, "configs", "rar.py") + ":tiny",
          f"--workdir={tmp_path / 'run'}", f"--data={_dataset(tmp_path)}",
          "--config.total_steps=12", "--config.ckpt_every=6"]
  # tiny anneals between steps 1 and 3: the first update samples random orders with chance 1.
  first = train.main(args + ["--stop_at=1"])
  assert first["random_order_probability"] == 1.0
  last = train.main(args)  # resumes at step 1
  assert np.isfinite(first["loss"]) and np.isfinite(last["loss"])
  assert last["random_order_probability"] == 0.0  # raster after the anneal
  # adaLN-zero starts every block as the identity, so 11 small steps lower the loss slowly (2.78 ->
  # 2.56 when written; each logged step was lower than the one before).
  assert last["loss"] < first["loss"] - 0.1, (first, last)
  assert last["accuracy"] > first["accuracy"] + 0.2, (first, last)
  assert max(int(s) for s in os.listdir(tmp_path / "run" / "checkpoints")) == 12


def test_presets_are_the_released_sizes():
  want = {"B": (768, 24, 1.0, 16.0, 2.75), "L": (1024, 24, 1.02, 15.5, 2.5),
          "XL": (1280, 32, 1.02, 6.9, 1.5), "XXL": (1408, 40, 1.02, 8.0, 1.2)}
  for size, (width, depth, temperature, scale, power) in want.items():
    c = rar_config.get_config(f"size={size}")
    m, s = c.model, c.sampling
    assert (m.width, m.depth, m.heads, m.mlp_ratio) == (width, depth, 16, 4.0)
    assert (m.seq_len, m.codebook_size, m.num_classes) == (256, 1024, 1000)
    assert (m.anneal_start, m.anneal_end, c.total_steps, c.data.batch_size) == (
        125_000, 187_500, 250_000, 2048)
    assert (s.temperature, s.cfg_scale, s.cfg_power, s.cfg_schedule) == (
        temperature, scale, power, "power-cosine")
    assert c.ema_decay == 0.0 and (c.optim.lr, c.optim.b2, c.optim.wd) == (4e-4, 0.96, 0.03)
  with pytest.raises(ValueError, match="'size' must be one of"):
    rar_config.get_config("size=XXXL")
  with pytest.raises(ValueError, match="unknown config argument 'layers'"):
    rar_config.get_config("layers=3")
