"""pretokenize -> train_generator -> sample on the tiny TiTok checkpoint, and sampling with the other
generator kinds (GPT with its KV cache, MAR) from saved initial states."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxtok.data import tokens as token_data
from tests.tools.conftest import load_tool, random_like, save_train_checkpoint


def test_pretokenize_photos_and_folder(tiny_titok, token_dir, image_folder, tmp_path):
  workdir, _, tokenizer, ema, _ = tiny_titok
  meta = token_data.read_meta(token_dir)
  toks = np.load(os.path.join(token_dir, "tokens.npy"))
  labels = np.load(os.path.join(token_dir, "labels.npy"))
  assert toks.shape == (20, 8) and toks.dtype == np.int32
  assert 0 <= toks.min() and toks.max() < 64
  assert meta["codebook_size"] == 64 and meta["num_examples"] == 20
  assert labels.shape == (20,) and 0 <= labels.min() and labels.max() < meta["num_classes"]
  assert len(set(labels.tolist())) > 1
  assert meta["tokenizer"]["checkpoint"].endswith(os.path.join("checkpoints", "1"))
  assert meta["tokenizer"]["config"]["name"] == "titok" and meta["tokenizer"]["weights"] == "ema"
  # grain reads it back as generator training will.
  batch = next(token_data.token_iterator(token_dir, batch_size=4, seed=0))
  assert batch["tokens"].shape == (4, 8)

  # A folder with class subfolders: labels = subfolder index, -1 at the top level; tokens of 4.
  out = str(tmp_path / "folder_tokens")
  load_tool("pretokenize").main(["pretokenize", f"--checkpoint={workdir}", f"--out={out}",
                                 "--source=folder", f"--folder={image_folder}", "--num_tokens=4"])
  meta = token_data.read_meta(out)
  np.testing.assert_array_equal(np.load(os.path.join(out, "labels.npy")), [0, 0, 1, 1, -1, -1])
  assert meta["class_names"] == ["a", "b"] and meta["token_shape"] == [4]
  from jaxtok.eval import images as img_lib
  imgs = img_lib.load_images(image_folder, meta["names"], 16)
  np.testing.assert_array_equal(np.load(os.path.join(out, "tokens.npy")),
                                tokenizer.encode(ema, jnp.asarray(imgs), num_tokens=4).tokens)
  with pytest.raises(ValueError, match="--source tfds needs --tfds_name"):
    load_tool("pretokenize").main(["pretokenize", f"--checkpoint={workdir}", f"--out={out}",
                                   "--source=tfds"])


def test_train_generator_then_sample(tiny_titok, token_dir, tmp_path):
  train = load_tool("train_generator")
  workdir = str(tmp_path / "maskgit")
  cfg = "--config=" + os.path.join("configs", "maskgit_titok.py") + ":tiny"
  # The tiny generator config has 16 codes; the error says which override fits the data.
  with pytest.raises(ValueError, match=r"codebook_size is 16, the tokenizer has 64 codes "
                                       r"\(--config.model.codebook_size=64\)"):
    train.main(["train_generator", cfg, f"--workdir={workdir}", f"--data={token_dir}"])
  with pytest.raises(FileNotFoundError, match="--data: .* is not a token dataset"):
    train.main(["train_generator", cfg, f"--workdir={workdir}", f"--data={tmp_path}",
                "--config.model.codebook_size=64"])
  over = ["--config.model.codebook_size=64", "--config.model.num_classes=16",
          "--config.total_steps=2"]
  metrics = train.main(["train_generator", cfg, f"--workdir={workdir}", f"--data={token_dir}"] + over)
  assert np.isfinite(metrics["loss"])
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
  assert json.load(open(os.path.join(workdir, "data_meta.json")))["codebook_size"] == 64

  out = str(tmp_path / "samples")
  res = load_tool("sample").main(["sample", cfg, f"--workdir={workdir}", f"--out={out}",
                                  "--num_samples=6", "--batch_size=4", "--cfg_scale=2.0",
                                  "--labels=0,3", "--temperature=1.0"] + over[:2])
  tokens = res["tokens"]
  assert tokens.shape == (6, 8) and tokens.dtype == np.int32
  assert tokens.min() >= 0 and tokens.max() < 64          # no mask id (64) left
  np.testing.assert_array_equal(res["labels"], [0, 3, 0, 3, 0, 3])
  with np.load(os.path.join(out, "tokens.npz")) as f:
    np.testing.assert_array_equal(f["tokens"], tokens)
  # The images are the tokenizer's decoding of the sampled tokens.
  _, _, tokenizer, ema, _ = tiny_titok
  want = np.round(np.clip(np.asarray(tokenizer.decode(ema, jnp.asarray(tokens))), 0, 1) * 255)
  got = np.stack([np.asarray(Image.open(os.path.join(out, "images", f"{i:05d}.png"))) for i in range(6)])
  assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
  assert os.path.exists(os.path.join(out, "grid.png"))
  # The released TiTok procedure, by flag: its options are recorded with the samples.
  res = load_tool("sample").main(["sample", cfg, f"--workdir={workdir}", f"--out={out}_titok",
                                  "--num_samples=4", "--batch_size=4", "--labels=0,3", "--mode=titok",
                                  "--preset=titok_b64", "--steps=4"] + over[:2])
  assert res["tokens"].shape == (4, 8) and res["tokens"].max() < 64
  with np.load(os.path.join(f"{out}_titok", "tokens.npz")) as f:
    opts = json.loads(str(f["options"]))
  assert opts["mode"] == "titok" and opts["preset"] == "titok_b64" and opts["steps"] == 4
  with pytest.raises(ValueError, match=r"--labels must lie in \[-1, 15\], got \[16\]"):
    load_tool("sample").main(["sample", cfg, f"--workdir={workdir}", f"--out={out}", "--labels=16"]
                             + over[:2])


def _init_generator_run(config_arg, workdir, data_meta, seed):
  """A generator run directory holding a (random) train state, as train_generator would leave it."""
  from jaxtok.train import generator, state as state_lib
  from jaxtok.configs import gpt_flextok, mar_vae  # noqa: F401
  module = {"gpt": gpt_flextok, "mar": mar_vae}[config_arg[0]]
  config = module.get_config(config_arg[1])
  for k, v in config_arg[2].items():
    config.model[k] = v
  _, _, init_fn, _ = generator.build(config, int(config.total_steps))
  abstract, _ = state_lib.abstract_train_state(init_fn, jax.random.key(0),
                                               state_lib.mesh_from_config(config),
                                               state_lib.rules_from_config(config))
  save_train_checkpoint(workdir, random_like(abstract, seed=seed, scale=0.3), config)
  with open(os.path.join(workdir, "data_meta.json"), "w") as f:
    json.dump(data_meta, f)
  return config


def test_sample_gpt_prefix_with_kv_cache(tiny_titok, token_dir, tmp_path):
  workdir = str(tmp_path / "gpt")
  _init_generator_run(("gpt", "tiny", {"codebook_size": 64}), workdir, token_data.read_meta(token_dir), 1)
  cfg = "--config=" + os.path.join("configs", "gpt_flextok.py") + ":tiny"
  res = load_tool("sample").main(["sample", cfg, f"--workdir={workdir}", "--num_samples=4",
                                  "--num_tokens=5", "--top_k=10", "--top_p=0.9",
                                  "--config.model.codebook_size=64"])
  assert res["tokens"].shape == (4, 5) and res["tokens"].max() < 64
  assert res["images"].shape == (4, 16, 16, 3)
  assert os.path.exists(os.path.join(workdir, "samples", "grid.png"))


def test_sample_mar_continuous_tokens(tmp_path):
  """MAR over a tiny VAE tokenizer (continuous tokens [N, 8, 4]) given as --tokenizer_checkpoint."""
  from jaxtok.configs import vae
  from jaxtok.tokenizers import api
  tok_cfg = vae.get_config("tiny")
  tokenizer = api.build(tok_cfg.model)
  tok_dir = str(tmp_path / "vae")
  raw = random_like(tokenizer.abstract_params(), seed=2)
  save_train_checkpoint(tok_dir, {"step": jnp.int32(1), "params": raw}, tok_cfg)
  workdir = str(tmp_path / "mar")
  _init_generator_run(("mar", "tiny", {}), workdir, {}, 3)
  cfg = "--config=" + os.path.join("configs", "mar_vae.py") + ":tiny"
  res = load_tool("sample").main(["sample", cfg, f"--workdir={workdir}", "--num_samples=2",
                                  f"--tokenizer_checkpoint={tok_dir}", "--head_steps=4",
                                  "--head_steps_lower=2", "--steps=3"])
  assert res["tokens"].shape == (2, 8, 4) and res["tokens"].dtype == np.float32
  assert np.all(np.isfinite(res["tokens"]))
  np.testing.assert_array_equal(res["images"], np.round(np.clip(np.asarray(
      tokenizer.decode(raw, jnp.asarray(res["tokens"]))), 0, 1) * 255).astype(np.uint8))


@pytest.mark.parametrize("name", ["token_shuffle_vqgan", "nar_vqgan"])
def test_grid_generators_train_with_falling_loss_then_sample(tiny_titok, token_dir, tmp_path, name):
  """Token-Shuffle and NAR over the tiny TiTok's 8 tokens read as a 2 x 4 grid: tools/train_generator
  (loss at step 1, then resumed to step 16 at lr 1e-2: lower), then tools/sample through the generate dispatch."""
  train, sample = load_tool("train_generator"), load_tool("sample")
  workdir = str(tmp_path / name)
  cfg = "--config=" + os.path.join("configs", f"{name}.py") + ":tiny"
  over = ["--config.model.codebook_size=64", "--config.model.num_classes=16",
          "--config.total_steps=16", "--config.ckpt_every=16", "--config.optim.lr=1e-2"]
  args = ["train_generator", cfg, f"--workdir={workdir}", f"--data={token_dir}"] + over
  first = train.main(args + ["--stop_at=1"])
  last = train.main(args)
  assert np.isfinite(last["loss"]) and last["loss"] < first["loss"] - 0.1, (first, last)
  res = sample.main(["sample", cfg, f"--workdir={workdir}", f"--out={tmp_path / 'samples'}",
                     "--num_samples=4", "--batch_size=4", "--labels=0,3", "--cfg_scale=2.0",
                     "--top_k=10"] + over[:2])
  assert res["tokens"].shape == (4, 8) and res["tokens"].dtype == np.int32
  assert 0 <= res["tokens"].min() and res["tokens"].max() < 64
  assert res["images"].shape == (4, 16, 16, 3)
  with pytest.raises(ValueError, match="generates the whole grid of seq_len=8 tokens, got 5"):
    sample.main(["sample", cfg, f"--workdir={workdir}", f"--out={tmp_path / 'x'}",
                 "--num_tokens=5"] + over[:2])
