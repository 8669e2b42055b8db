"""Instella-T2I end to end through the tools: the released binary autoencoder (tiny, random weights)
pretokenizes captioned photos (--captions), tools/train_generator.py trains the released diffusion
DiT / AR networks on those bits with a (random, tiny) OLMo tower reading the captions, and
tools/sample.py --prompt decodes the sampled bits to images."""
import json
import os

import numpy as np
import pytest

from tests.tools.conftest import load_tool, pretokenize_photos, random_tokenizer_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bits_dir(tmp_path_factory):
  """(BAE run dir, captioned token dataset of 16 photo crops: bits [16, 8, 32])."""
  from jaxtok.configs import instella
  run, _ = random_tokenizer_run(tmp_path_factory, instella.get_config("release,tiny"), "bae_run",
                                ema=True)
  return run, pretokenize_photos(tmp_path_factory, run, "bae_bits", 16, "--captions")


def test_pretokenize_captions_flag_stores_texts_for_any_tokenizer(bits_dir):
  from jaxtok.data import photo_captions, tokens as token_data
  _, out = bits_dir
  bits = np.load(os.path.join(out, "tokens.npy"))
  assert bits.shape == (16, 8, 32) and set(np.unique(bits)) <= {0, 1}
  table = token_data.read_captions(out)
  assert table["captions"] == photo_captions.captioned_photos()[1] and table["features"] == {}
  labels = np.load(os.path.join(out, "labels.npy"))
  ids = np.load(os.path.join(out, f"{token_data.CAPTION_IDS}.npy"))
  np.testing.assert_array_equal(ids, labels)   # photos: each crop carries its photo's caption


@pytest.mark.parametrize("model", ["diff", "ar"])
def test_train_on_captions_then_sample_from_prompts(bits_dir, tmp_path, model):
  run, data = bits_dir
  train, sample = load_tool("train_generator"), load_tool("sample")
  workdir = str(tmp_path / model)
  cfg = f"--config={os.path.join('configs', 'instella_t2i.py')}:model={model},tiny"
  over = ["--config.model.num_bits=32", "--config.total_steps=12", "--config.ckpt_every=12",
          "--config.optim.lr=3e-3", "--config.data.batch_size=8"]
  args = ["train_generator", cfg, f"--workdir={workdir}", f"--data={data}"] + over
  first = train.main(args + ["--stop_at=1"])
  last = train.main(args)
  assert np.isfinite(last["loss"]) and last["loss"] < first["loss"], (first, last)
  res = sample.main(["sample", cfg, f"--workdir={workdir}", f"--out={tmp_path / 'samples'}",
                     "--num_samples=3", "--batch_size=2", "--prompt=a photo of a cat",
                     "--prompt=a red rocket", "--cfg_scale=2.0", over[0]])
  assert res["prompts"] == ["a photo of a cat", "a red rocket", "a photo of a cat"]
  assert res["tokens"].shape == (3, 8, 32) and set(np.unique(res["tokens"])) <= {0, 1}
  assert res["images"].shape == (3, 16, 16, 3) and res["images"].dtype == np.uint8
  with open(os.path.join(workdir, "data_meta.json")) as f:
    assert json.load(f)["tokenizer"]["checkpoint"].startswith(run)
  with pytest.raises(ValueError, match="--prompt is required"):
    sample.main(["sample", cfg, f"--workdir={workdir}", f"--out={tmp_path / 'x'}", over[0]])
  # --olmo_checkpoint / --olmo_tokenizer replace the run's tower (here: files that do not exist).
  with pytest.raises(ValueError, match="tokenizer.json"):
    sample.main(["sample", cfg, f"--workdir={workdir}", f"--out={tmp_path / 'y'}", over[0],
                 "--prompt=a cat", f"--olmo_checkpoint={tmp_path}", "--olmo_tokenizer=/no/file"])
