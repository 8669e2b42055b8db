"""tools/evaluate.py on the tiny TiTok checkpoint (tokenizer metrics, plots) and in gFID mode. The FID
feature network is replaced by a small deterministic function (the real one needs a weights file)."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxtok.eval import fid_stats
from jaxtok.metrics import fid as fid_lib
from tests.tools.conftest import load_tool

PROJ = np.random.default_rng(0).normal(size=(48, 5))


def tiny_features(images):
  """4x4 average-pooled pixels through a fixed projection: deterministic, 5-d."""
  x = np.asarray(images, np.float64)
  b, h, w, _ = x.shape
  x = x[:, :h - h % 4, :w - w % 4].reshape(b, 4, h // 4, 4, w // 4, 3).mean(axis=(2, 4))
  return np.tanh(x.reshape(b, -1) @ PROJ)


@pytest.fixture
def fake_inception(monkeypatch, tmp_path):
  calls = []

  def fake(path, **kw):
    calls.append(path)
    return tiny_features

  monkeypatch.setattr(fid_stats, "inception_features", fake)
  weights = tmp_path / "inception.npz"
  weights.write_bytes(b"unused")
  return str(weights), calls


def test_tokenizer_metrics_and_plots(tiny_titok, fake_inception, tmp_path):
  workdir, _, tokenizer, ema, _ = tiny_titok
  weights, calls = fake_inception
  out = str(tmp_path / "eval")
  rep = load_tool("evaluate").main([
      "evaluate", f"--checkpoint={workdir}", f"--out={out}", "--num_images=12", "--batch_size=8",
      f"--inception_weights={weights}", "--token_counts=2,8", "--pfid_p=0.5", "--pfid_k=4",
      "--codec_images=3"])
  assert calls == [weights]
  with open(os.path.join(out, "metrics.json")) as f:
    saved = json.load(f)
  assert saved["per_token_count"] == rep["per_token_count"]
  assert set(saved["per_token_count"]) == {"2", "8"}
  # Numbers against a direct computation on the same held-out crops.
  from jaxtok.data import photos
  _, held = photos.load_photos(16, 12)
  rec = np.asarray(tokenizer.reconstruct(ema, jnp.asarray(held), num_tokens=8))
  rec = np.round(np.clip(rec, 0, 1) * 255) / 255
  mse = np.mean((rec - held.astype(np.float64)) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(saved["per_token_count"]["8"]["psnr"], np.mean(-10 * np.log10(mse)),
                             rtol=1e-4)
  np.testing.assert_allclose(saved["per_token_count"]["8"]["rfid"],
                             fid_lib.fid_from_features(tiny_features(rec), tiny_features(held)),
                             rtol=1e-5, atol=1e-8)
  assert -1 <= saved["per_token_count"]["2"]["ssim"] <= 1
  cb = saved["codebook"]
  assert cb["codebook_size"] == 64 and cb["tokens"] == 12 * 8 and 0 < cb["usage"] <= 1
  assert 1 <= cb["perplexity"] <= 64
  p = saved["pfid"]
  assert p["perturbation"] == {"p": 0.5, "k": 4, "fraction": 1.0}
  assert p["rfid"] == pytest.approx(saved["per_token_count"]["8"]["rfid"], rel=1e-6, abs=1e-9)
  assert 0.2 < p["changed_token_rate"] < 0.55 and p["pfid"] >= 0
  rd = saved["rate_distortion"]
  assert [r["num_tokens"] for r in rd] == [2, 8]
  assert rd[0]["token_bytes"] == pytest.approx(2 * 6 / 8) and rd[1]["token_bytes"] == pytest.approx(6)
  assert all(r["jpeg_bytes"] > 0 and r["webp_bytes"] > 0 for r in rd)
  for name in ("rate_distortion.png", "psnr_vs_tokens.png", "reconstructions.png"):
    with Image.open(os.path.join(out, name)) as im:
      assert im.size[0] > 50 and im.size[1] > 50


def test_gfid_of_sample_folders(fake_inception, image_folder, tmp_path):
  weights, _ = fake_inception
  tool = load_tool("evaluate")
  out = str(tmp_path / "g")
  # Samples: the reference's own images -> gFID ~ 0; saved statistics give the same number.
  rep = tool.main(["evaluate", f"--samples={image_folder}", f"--reference={image_folder}",
                   f"--inception_weights={weights}", f"--out={out}",
                   f"--save_reference_stats={tmp_path / 'ref.npz'}"])
  assert rep["num_samples"] == 6 and rep["num_reference"] == 6
  assert abs(rep["gfid"]) < 1e-6
  shifted = tmp_path / "shifted"
  shifted.mkdir()
  for name in os.listdir(os.path.join(image_folder, "b")):
    im = np.asarray(Image.open(os.path.join(image_folder, "b", name)))
    for i in range(3):
      Image.fromarray((im // (i + 2)).astype(np.uint8)).save(shifted / f"{i}_{name}")
  rep2 = tool.main(["evaluate", f"--samples={shifted}", f"--reference={tmp_path / 'ref.npz'}",
                    f"--inception_weights={weights}", f"--out={out}"])
  assert rep2["gfid"] > 0.01 and rep2["num_reference"] == 6
  with open(os.path.join(out, "metrics.json")) as f:
    assert json.load(f)["gfid"] == rep2["gfid"]
  with pytest.raises(ValueError, match="needs --inception_weights"):
    tool.main(["evaluate", f"--samples={shifted}", f"--reference={image_folder}", f"--out={out}"])
  with pytest.raises(FileNotFoundError, match="--reference: expected a folder of images or a statistics"):
    tool.main(["evaluate", f"--samples={shifted}", f"--reference={tmp_path / 'none'}",
               f"--inception_weights={weights}", f"--out={out}"])


@pytest.mark.slow
def test_training_job_and_evaluate_report_identical_numbers(tmp_path):
  """Issue 12 section 4: the job's final_metrics.json and tools/evaluate.py on its checkpoint agree
  exactly (same held-out set from the stored data config, same scorer), with the default flags."""
  from jaxtok.configs import onedpiece
  from jaxtok.train import loop
  config = onedpiece.get_config("tiny")
  config.total_steps, config.eval_every, config.ckpt_every = 2, 100, 2
  config.data.max_scale, config.data.heldout = 3, 20    # not the tool's old defaults (4, 64)
  workdir = str(tmp_path / "run")
  loop.train(config, workdir, show_progress=False)
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    job = json.load(f)
  rep = load_tool("evaluate").main(["evaluate", f"--checkpoint={workdir}", f"--out={tmp_path / 'ev'}",
                                    "--codec_images=0"])
  assert rep["num_images"] == job["num_images"] == 20
  want = {("all" if k == "None" else k): v for k, v in rep["per_token_count"].items()}
  assert want == job["per_token_count"]            # bit-identical floats, every count
  assert len(want) == len(config.eval.token_counts) and rep["max_scale"] == 3
