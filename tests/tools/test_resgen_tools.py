"""ResGen through the tools: an RVQ TiTok (configs/titok.py:tiny,quantizer=rvq) pretokenized into
[N, 8, 2] tokens and its codebook.npy, tools/train_generator.py with falling loss, tools/sample.py."""
import os

import numpy as np
import pytest

from tests.tools.conftest import load_tool, pretokenize_photos, random_tokenizer_run


@pytest.fixture(scope="module")
def rvq_tokens(tmp_path_factory):
  from jaxtok.configs import titok
  workdir, params = random_tokenizer_run(tmp_path_factory, titok.get_config("tiny,quantizer=rvq"),
                                         "rvq_titok")
  return pretokenize_photos(tmp_path_factory, workdir, "rvq_tokens", 8, "--use_ema=false"), params


@pytest.mark.slow
def test_resgen_trains_with_falling_loss_then_samples(rvq_tokens, tmp_path):
  data, params = rvq_tokens
  tokens = np.load(os.path.join(data, "tokens.npy"))
  book = np.load(os.path.join(data, "codebook.npy"))
  assert tokens.shape == (8, 8, 2) and tokens.dtype == np.int32
  # The tiny TiTok uses cosine codes: the stored vectors are the unit-normalised codebook.
  raw = np.asarray(params["codebook"].get_value())
  np.testing.assert_allclose(book, raw / np.linalg.norm(raw, axis=-1, keepdims=True), rtol=1e-5)
  train, sample = load_tool("train_generator"), load_tool("sample")
  workdir = str(tmp_path / "resgen")
  cfg = "--config=" + os.path.join("configs", "resgen.py") + ":tiny"
  over = [f"--config.model.codebook={data}/codebook.npy", "--config.total_steps=8",
          "--config.ckpt_every=8", "--config.optim.lr=1e-2"]
  args = ["train_generator", cfg, f"--workdir={workdir}", f"--data={data}"] + over
  first = train.main(args + ["--stop_at=1"])
  last = train.main(args)
  assert np.isfinite(last["loss"]) and last["loss"] < first["loss"] - 0.1, (first, last)
  # The code vectors are unchanged by training (zero gradient, no weight decay).
  from jaxtok.configs import resgen
  from jaxtok.train import generator
  config = resgen.get_config("tiny")
  config.model.codebook = f"{data}/codebook.npy"
  _, trained = generator.load_params(config, workdir, use_ema=False)
  np.testing.assert_array_equal(np.asarray(trained["codebook"].get_value()), book)
  res = sample.main(["sample", cfg, f"--workdir={workdir}", f"--out={tmp_path / 'samples'}",
                     "--num_samples=4", "--batch_size=4", "--steps=4"] + over[:1])
  assert res["tokens"].shape == (4, 8, 2) and res["tokens"].dtype == np.int32
  assert 0 <= res["tokens"].min() and res["tokens"].max() < 64
  assert res["images"].shape == (4, 16, 16, 3)
