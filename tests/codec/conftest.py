"""A tiny tokenizer run and its fitted priors (through tools/train_prior.py), shared by the codec tests."""
import os

import pytest

from tests.tools.conftest import load_tool


@pytest.fixture(scope="session")
def fitted(tmp_path_factory):
  from jaxtok.configs import onedpiece
  from jaxtok.train import loop
  root = tmp_path_factory.mktemp("codec")
  config = onedpiece.get_config("tiny")
  config.total_steps, config.ckpt_every = 2, 2
  run = str(root / "run")
  loop.train(config, run, show_progress=False)
  before = {f: os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(run) for f in fs}
  out = str(root / "prior")
  result = load_tool("train_prior").main(["train_prior", f"--checkpoint={run}", f"--out={out}",
                                          "--num_examples=48", "--config_arg=tiny"])
  after = {f: os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(run) for f in fs}
  assert before == after                      # the tokenizer run is only read
  return run, out, result
