"""Captions through the tools: TA-TiTok and TexTok train with tools/train.py on the bundled photos'
captions, tools/pretokenize.py writes the captions beside a TA-TiTok run's tokens, MaskGen trains
on them with tools/train_generator.py and tools/sample.py --prompt samples from it.

One TA-TiTok run (a tools/train.py subprocess, `tatitok_run`) is shared by every test."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.tools.conftest import ROOT, load_tool

STEPS = 12


def _train_cmd(config, workdir, *extra):
  return [sys.executable, os.path.join(ROOT, "tools", "train.py"), "--config",
          os.path.join(ROOT, "configs", config), "--workdir", workdir, *extra]


def _run(cmd):
  """Runs a tool in a subprocess with this process's XLA flags (8 CPU devices, as in-process runs)
  and its persistent compilation cache, so in- and out-of-process runs compile the same programs."""
  import jax
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  cache = jax.config.jax_compilation_cache_dir
  if cache:
    env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return out.stdout + out.stderr


def _logged(workdir):
  """(step, loss) of every training line of the run's metrics.jsonl (eval lines have no loss)."""
  lines = [json.loads(l) for l in open(os.path.join(workdir, "tb", "metrics.jsonl"))]
  return [(l["step"], l["loss"]) for l in lines if "loss" in l]


def _losses(workdir):
  return [loss for _, loss in _logged(workdir)]


TATITOK_OVERRIDES = dict(total_steps=STEPS, ckpt_every=6, eval_every=100, keep_checkpoints=3)
TATITOK_ARGS = tuple(f"--config.{k}={v}" for k, v in TATITOK_OVERRIDES.items())


@pytest.fixture(scope="session")
def tatitok_run(tmp_path_factory):
  """A tools/train.py run of configs/tatitok.py:tiny (tiny random CLIP) for STEPS steps on the
  captioned photo crops, checkpoints at 6 and 12, the final captioned evaluation written."""
  workdir = str(tmp_path_factory.mktemp("tatitok") / "run")
  log = _run(_train_cmd("tatitok.py:tiny", workdir, *TATITOK_ARGS))
  return workdir, log


@pytest.fixture(scope="session")
def caption_tokens(tatitok_run, tmp_path_factory):
  """tools/pretokenize.py on the TA-TiTok run: 32 captioned crops."""
  out = str(tmp_path_factory.mktemp("captioned") / "tokens")
  load_tool("pretokenize").main(["pretokenize", f"--checkpoint={tatitok_run[0]}", f"--out={out}",
                                 "--source=photos", "--num_examples=32", "--batch_size=16"])
  return out


@pytest.mark.slow
def test_tatitok_trains_through_tools_train_and_scores_heldout_with_captions(tatitok_run):
  workdir, log = tatitok_run
  losses = _losses(workdir)
  assert len(losses) == STEPS and np.all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:2]), losses
  report = json.load(open(os.path.join(workdir, "final_metrics.json")))
  psnr = report["per_token_count"]["8"]["psnr"]  # decoded with each held-out crop's caption
  assert np.isfinite(psnr) and psnr > 8.0, report
  assert "FINAL step=12" in log


@pytest.mark.slow
def test_tatitok_resumes_bitwise(tatitok_run, tmp_path):
  """The run's workdir cut back to its step-6 checkpoint and trained again (jaxtok.train.loop.train,
  what tools/train.py runs) ends bitwise equal to it, with the same losses at steps 7-12: the
  captioned batches resume exactly (the crops' state is checkpointed)."""
  from jaxtok.configs import tatitok
  from jaxtok.train import loop
  workdir = tatitok_run[0]
  cut = str(tmp_path / "cut")
  shutil.copytree(workdir, cut)
  shutil.rmtree(os.path.join(cut, "checkpoints", str(STEPS)))
  os.remove(os.path.join(cut, "final.json"))
  c = tatitok.get_config("tiny")
  c.update(TATITOK_OVERRIDES)
  c.final_eval = False
  report = loop.train(c, cut, show_progress=False)
  a = json.load(open(os.path.join(workdir, "final.json")))
  assert report["step"] == a["step"] == STEPS and report["params_sha256"] == a["params_sha256"]
  logged = _logged(cut)  # the copied lines 1-12, then the resumed run's 7-12
  assert [s for s, _ in logged] == list(range(1, STEPS + 1)) + list(range(7, STEPS + 1))
  assert logged[STEPS:] == logged[6:STEPS]


@pytest.mark.slow
def test_textok_trains_through_the_loop(tmp_path):
  """configs/textok.py:tiny through jaxtok.train.loop.train (tools/train.py's body): batches of
  caption word ids, falling loss, held-out crops scored with their captions."""
  from jaxtok.configs import textok
  from jaxtok.train import loop
  c = textok.get_config("tiny")
  c.update(total_steps=12, ckpt_every=12, eval_every=6)
  c.optim.lr = 3e-3
  workdir = str(tmp_path / "textok")
  report = loop.train(c, workdir, show_progress=False)
  losses = _losses(workdir)
  assert len(losses) == 12 and np.all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < np.mean(losses[:2]), losses
  assert report["step"] == 12 and np.isfinite(report["per_token_count"]["all"]["psnr"])
  assert os.path.exists(os.path.join(workdir, "images", "recon_0000006.png"))


@pytest.mark.slow
def test_pretokenize_writes_the_captions_and_they_round_trip(tatitok_run, caption_tokens):
  from jaxtok.configs import tatitok as tatitok_config
  from jaxtok.data import captions as captions_lib
  from jaxtok.data import photos
  from jaxtok.data import tokens as token_data
  from jaxtok.tokenizers import tatitok
  table = token_data.read_captions(caption_tokens)
  names = [n for n, _ in photos.named_photos()]
  assert table["captions"] == [captions_lib.CAPTIONS[n] for n in names]
  labels = np.load(os.path.join(caption_tokens, "labels.npy"))
  ids = np.load(os.path.join(caption_tokens, "caption_ids.npy"))
  np.testing.assert_array_equal(ids, labels)  # each crop carries its photo's caption
  assert len(set(ids.tolist())) > 1
  # The stored features are the run's tiny CLIP tower's, recomputed from the stored text config;
  # the last row is the empty caption's.
  text_cfg = tatitok_config.get_config("tiny").text
  again = tatitok.caption_features(text_cfg, table["captions"] + [""])
  assert sorted(table["features"]) == ["penultimate", "pooled", "tokens"]
  for k, v in table["features"].items():
    assert v.shape[0] == len(names) + 1
    np.testing.assert_allclose(v, again[k], rtol=1e-5, atol=1e-6)
  assert table["text"]["clip"]["width"] == text_cfg.clip.width
  meta = token_data.read_meta(caption_tokens)
  assert meta["text"] == table["text"] and meta["token_shape"] == [8]
  item = token_data.TokenSource(caption_tokens)[5]
  assert item["caption"] == ids[5] and item["tokens"].shape == (8,)
  batch = next(token_data.token_iterator(caption_tokens, batch_size=4, seed=0))
  assert batch["caption"].shape == (4,) and batch["caption"].dtype == np.int32


@pytest.mark.slow
def test_maskgen_trains_on_captioned_tokens_then_samples_from_prompts(caption_tokens, tmp_path):
  train, sample = load_tool("train_generator"), load_tool("sample")
  workdir = str(tmp_path / "maskgen")
  cfg = "--config=" + os.path.join(ROOT, "configs", "maskgen.py") + ":tiny"
  over = ["--config.total_steps=16", "--config.ckpt_every=16", "--config.optim.lr=1e-2"]
  args = ["train_generator", cfg, f"--workdir={workdir}", f"--data={caption_tokens}"] + over
  first = train.main(args + ["--stop_at=1"])
  last = train.main(args)
  assert np.isfinite(last["loss"]) and last["loss"] < first["loss"] - 0.1, (first, last)
  meta = json.load(open(os.path.join(workdir, "data_meta.json")))
  assert meta["text"]["random_init_for_smoke_test"] is True  # the tower --prompt will reuse
  res = sample.main(["sample", cfg, f"--workdir={workdir}", f"--out={tmp_path / 'samples'}",
                     "--num_samples=2", "--batch_size=2", "--prompt=a photo of a cat",
                     "--prompt=a telescope image of galaxies"])
  assert res["prompts"] == ["a photo of a cat", "a telescope image of galaxies"]
  assert res["tokens"].shape == (2, 8) and res["tokens"].dtype == np.int32
  assert 0 <= res["tokens"].min() and res["tokens"].max() < 64
  assert res["images"].shape == (2, 16, 16, 3) and res["images"].dtype == np.uint8
  saved = np.load(os.path.join(tmp_path, "samples", "tokens.npz"))
  assert list(saved["prompts"]) == res["prompts"]
  # --prompt given to a class-conditional generator is refused before anything loads.
  with pytest.raises(ValueError, match="--prompt needs a text-to-image generator"):
    sample.main(["sample", "--config=" + os.path.join(ROOT, "configs", "maskgit_titok.py") + ":tiny",
                 f"--workdir={workdir}", "--prompt=a photo of a cat"])


def test_text_generator_without_captions_is_refused(tmp_path):
  from jaxtok.data import tokens as token_data
  data = str(tmp_path / "plain")
  token_data.write_token_dataset(data, np.zeros((16, 8), np.int32), np.zeros(16, np.int32),
                                 {"codebook_size": 64})
  train = load_tool("train_generator")
  cfg = "--config=" + os.path.join(ROOT, "configs", "maskgen.py") + ":tiny"
  with pytest.raises(ValueError, match=r"generator 'maskgen' is text-conditioned: --data must hold "
                                       r"captions \(captions.json"):
    train.main(["train_generator", cfg, f"--workdir={tmp_path / 'run'}", f"--data={data}"])


def test_text_tokenizer_without_text_section_is_refused(tmp_path):
  from jaxtok.configs import tatitok
  from jaxtok.train import loop
  c = tatitok.get_config("tiny")
  c.text = None
  with pytest.raises(ValueError, match="tatitok trains on captions: config.text must say"):
    loop.train(c, str(tmp_path / "run"), show_progress=False)


def test_caption_tables_and_batches_for_textok():
  """TexTok's batches carry word ids of each crop's caption (and its mask)."""
  from jaxtok.configs import textok
  from jaxtok.data import captions as captions_lib
  from jaxtok.data import photo_captions
  c = textok.get_config("tiny")
  data = photo_captions.training_data(c, seed=0)
  batch = next(data)
  assert sorted(batch) == ["caption", "image", "text_ids", "text_mask"]
  _, texts = photo_captions.captioned_photos()
  ids, mask = captions_lib.WordVocab().encode([texts[j] for j in batch["caption"]], 12)
  np.testing.assert_array_equal(batch["text_ids"], ids)
  np.testing.assert_array_equal(batch["text_mask"], mask)
  state = data.get_state()
  again = photo_captions.training_data(c, seed=0)
  again.set_state(state)
  nxt, nxt2 = next(data), next(again)
  for k in nxt:
    np.testing.assert_array_equal(nxt[k], nxt2[k])
  # held-out crop i is cut from photo i mod P and carries its caption
  np.testing.assert_array_equal(photo_captions.heldout_captions(5, 3), [0, 1, 2, 0, 1])
  with pytest.raises(ValueError, match="config.text.vocab must be one of"):
    c.text.vocab = "t5"
    photo_captions.training_data(c, seed=0)


@pytest.mark.slow
def test_captionless_tools_refuse_the_text_aware_run(tatitok_run, tmp_path):
  """tools/evaluate.py and tools/tokenize_images.py have no captions for their images: they refuse
  the TA-TiTok run, naming what is missing and where its captioned scores are."""
  workdir = tatitok_run[0]
  with pytest.raises(ValueError, match="tools/evaluate.py cannot run the text-aware tokenizer "
                                       "'tatitok'.*carry none.*final_metrics.json"):
    load_tool("evaluate").main(["evaluate", f"--checkpoint={workdir}", f"--out={tmp_path / 'e'}"])
  with pytest.raises(ValueError, match="tools/tokenize_images.py cannot run the text-aware "
                                       "tokenizer 'tatitok'"):
    load_tool("tokenize_images").main(["tokenize_images", f"--checkpoint={workdir}",
                                       f"--input={tmp_path}", f"--output={tmp_path / 't'}"])
  from jaxtok.data import photo_captions
  photo_captions.refuse_captionless({"name": "titok"}, "tools/evaluate.py")  # others pass


@pytest.mark.slow
def test_any_text_conditioned_generator_trains_on_captioned_continuous_tokens(tmp_path):
  """The trainer's text path is generic: MaskGen-KL (continuous tokens; its module defines
  text_condition too) trains through tools/train_generator.py on a captioned dataset of float
  tokens [N, 8, 4] whose caption features are CLIP-shaped (T 8, width 16, as the tiny tower)."""
  from jaxtok.data import tokens as token_data
  rng = np.random.default_rng(0)
  texts = ["a photo of a cat", "a photo of a flower", "a telescope image of galaxies"]
  ids = rng.integers(0, 3, 16)
  feats = {"tokens": rng.normal(size=(4, 8, 16)), "penultimate": rng.normal(size=(4, 8, 16)),
           "pooled": rng.normal(size=(4, 16))}
  data = str(tmp_path / "vae_tokens")
  token_data.write_token_dataset(data, rng.normal(size=(16, 8, 4)).astype(np.float32), ids, {},
                                 captions={"ids": ids, "texts": texts, "features": feats})
  cfg = "--config=" + os.path.join(ROOT, "configs", "maskgen_kl.py") + ":tiny"
  metrics = load_tool("train_generator").main(["train_generator", cfg, f"--workdir={tmp_path / 'kl'}",
                                               f"--data={data}"])
  assert np.isfinite(metrics["loss"])
