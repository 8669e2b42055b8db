"""A tiny tokenizer run and its fitted priors (through tools/train_prior.py), shared by the codec tests."""
import os

import pytest

from tests.tools.conftest import load_tool, random_tokenizer_run


@pytest.fixture(scope="session")
def fitted(tmp_path_factory):
  """(tokenizer run, prior folder, train_prior's result): the run holds random weights of the tiny
  One-D-Piece (a training run's layout and config; compiling two train steps cost ~20 s)."""
  from jaxtok.configs import onedpiece
  root = tmp_path_factory.mktemp("codec")
  run, _ = random_tokenizer_run(tmp_path_factory, onedpiece.get_config("tiny"), "codec_run",
                                ema=True)
  before = {f: os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(run) for f in fs}
  out = str(root / "prior")
  result = load_tool("train_prior").main(["train_prior", f"--checkpoint={run}", f"--out={out}",
                                          "--num_examples=48", "--config_arg=tiny"])
  after = {f: os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(run) for f in fs}
  assert before == after                      # the tokenizer run is only read
  return run, out, result
