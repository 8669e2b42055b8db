"""D-AR -> GPT end to end, the path a user runs: a configs/dar.py:tiny run (random weights),
tools/pretokenize.py on that run, tools/train_generator.py with configs/gpt_dar.py:tiny over
the tokens (loss at step 1, then resumed to step 16: lower), and tools/sample.py decoding the
samples with the D-AR decoder and writing the streaming previews (--previews: the image after each
group of tokens)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.eval import checkpoints
from jaxtok.eval import images as img_lib
from tests.tools.conftest import load_tool, random_tokenizer_run

GROUPS, TOKENS, SIDE = 4, 8, 16  # configs/dar.py:tiny


@pytest.fixture(scope="module")
def dar_tokens(tmp_path_factory):
  """(D-AR run dir, token dataset dir): a training run of the tiny D-AR holding random weights
  (tools/train.py on it is tests/tokenizers/test_dar.py's), then 16 photo crops pretokenized
  through it."""
  from jaxtok.configs import dar
  root = tmp_path_factory.mktemp("dar_gpt")
  run, _ = random_tokenizer_run(tmp_path_factory, dar.get_config("tiny"), "dar", ema=True)
  data = str(root / "tokens")
  load_tool("pretokenize").main(["pretokenize", f"--checkpoint={run}", f"--out={data}",
                                 "--source=photos", "--num_examples=16", "--batch_size=8"])
  return run, data


@pytest.mark.slow
def test_gpt_on_dar_tokens_trains_then_samples_with_previews(dar_tokens, tiny_titok, tmp_path):
  run, data = dar_tokens
  tokens = np.load(os.path.join(data, "tokens.npy"))
  assert tokens.shape == (16, TOKENS) and 0 <= tokens.min() and tokens.max() < 8 * 5 * 5
  train, sample = load_tool("train_generator"), load_tool("sample")
  workdir = str(tmp_path / "gpt")
  cfg = "--config=" + os.path.join("configs", "gpt_dar.py") + ":tiny"
  over = ["--config.total_steps=16", "--config.ckpt_every=16", "--config.optim.lr=1e-2"]
  args = ["train_generator", cfg, f"--workdir={workdir}", f"--data={data}"] + over
  first = train.main(args + ["--stop_at=1"])
  last = train.main(args)
  print(f"GPT on D-AR tokens: loss {first['loss']:.3f} at step 1 -> {last['loss']:.3f} at step 16")
  assert np.isfinite(last["loss"]) and last["loss"] < first["loss"] - 0.5, (first, last)
  out = tmp_path / "samples"
  res = sample.main(["sample", cfg, f"--workdir={workdir}", f"--out={out}", "--num_samples=3",
                     "--batch_size=2", "--previews"])
  assert res["tokens"].shape == (3, TOKENS) and res["images"].shape == (3, SIDE, SIDE, 3)
  previews = res["previews"]
  assert previews.shape == (3, GROUPS, SIDE, SIDE, 3) and previews.dtype == np.uint8
  # The last preview is the full decode (same noise), and preview g of the first batch is the
  # facade's decode of groups 0..g alone with that batch's key (uint8 rounding: off by <= 1).
  close = lambda a, b: np.abs(a.astype(int) - b.astype(int)).max() <= 1
  assert close(previews[:, -1], res["images"])
  tokenizer, params, _ = checkpoints.load_tokenizer(None, run)
  for g in range(GROUPS):
    alone = tokenizer.decode(params, jnp.asarray(res["tokens"][:2, :(g + 1) * (TOKENS // GROUPS)]),
                             rng=jax.random.fold_in(jax.random.key(0), 0))
    assert close(previews[:2, g], img_lib.to_uint8(alone)), g
  for i in range(3):
    assert os.path.isfile(out / "previews" / f"{i:05d}.png")
  # Previews need a D-AR decoder: refused with another tokenizer, before any sampling.
  with pytest.raises(ValueError, match="--previews needs a D-AR tokenizer"):
    sample.main(["sample", cfg, f"--workdir={workdir}", f"--out={tmp_path / 'x'}", "--previews",
                 f"--tokenizer_checkpoint={tiny_titok[0]}"])


def test_gpt_dar_config_follows_dar():
  from jaxtok.configs import gpt_dar
  tiny, full = gpt_dar.get_config("tiny"), gpt_dar.get_config("size=B")
  assert (tiny.model.codebook_size, tiny.model.seq_len) == (8 * 5 * 5, TOKENS)
  assert (full.model.codebook_size, full.model.seq_len, full.model.num_classes) == (64000, 256, 1000)
  assert gpt_dar.get_config("tiny,tokens=4,codebook=50").model.seq_len == 4
  with pytest.raises(ValueError, match="unknown config argument 'groups'"):
    gpt_dar.get_config("tiny,groups=2")
