"""Loop pieces: TensorBoard event files, NaN guard, data wiring, eval grid."""
import numpy as np
import pytest

from jaxtok.train import evaluate
from jaxtok.train import loop


def test_event_writer_files_read_back_with_tensorboard(tmp_path):
  # TensorBoard's own reader (it checks the record CRCs) sees every tag, step and value written.
  loader = pytest.importorskip("tensorboard.backend.event_processing.event_file_loader")
  w = loop.EventWriter(str(tmp_path))
  w.scalars(3, {"a": 1.0, "eval/psnr": 21.5})
  w.scalars(7, {"a": 0.25})
  w.close()
  files = sorted(p.name for p in tmp_path.iterdir())
  assert files[0].startswith("events.out.tfevents") and "metrics.jsonl" in files
  assert (tmp_path / "metrics.jsonl").read_text().splitlines() == [
      '{"step": 3, "a": 1.0, "eval/psnr": 21.5}', '{"step": 7, "a": 0.25}']
  got = []
  for event in loader.EventFileLoader(str(tmp_path / files[0])).Load():
    for value in event.summary.value:
      # The loader migrates simple_value to a scalar tensor; either way it is one float.
      number = value.simple_value if value.HasField("simple_value") else value.tensor.float_val[0]
      got.append((event.step, value.tag, number))
  assert got == [(3, "a", 1.0), (3, "eval/psnr", 21.5), (7, "a", 0.25)]
  assert not loop.EventWriter(str(tmp_path / "off"), enabled=False).enabled
  assert not (tmp_path / "off").exists()


def test_nan_guard_names_step_range():
  loop.check_finite({"loss": 1.0}, 0, 10)
  with pytest.raises(FloatingPointError, match=r"\['loss'\].*\(10, 20\]"):
    loop.check_finite({"loss": float("nan"), "lr": 1.0}, 10, 20)


def test_loop_reexports_the_photo_dataset():
  # The crops themselves are tested in tests/data/test_photos.py; the loop reads them through
  # jaxtok.data.pipeline.from_config (data.source = "photos").
  from jaxtok.data import photos  # pylint: disable=g-import-not-at-top
  assert loop.PhotoCrops is photos.PhotoCrops and loop.load_photos is photos.load_photos


def test_metrics_and_grid():
  # The scorer rates the 8-bit image that would be saved: 0.1 becomes round(25.5) / 255 = 26 / 255.
  x = np.zeros((20, 16, 16, 3), np.float32)     # > EVAL_CHUNK images: two chunks
  m, _ = evaluate.evaluate(lambda im, k: im + 0.1, x, [4])
  np.testing.assert_allclose(m["4"]["psnr"], -20 * np.log10(26 / 255), rtol=1e-6)
  assert set(m["4"]) == {"psnr", "ssim"}
  m, _ = evaluate.evaluate(lambda im, k: im + 0.1, x[:, :8, :8], [4])
  assert set(m["4"]) == {"psnr"}                 # SSIM needs its 11x11 window
  # k=None reconstructs exactly; k=1 returns a constant 0.5 image.
  imgs = np.random.default_rng(0).random((3, 16, 16, 3)).astype(np.float32)
  fn = lambda im, k: im if k is None else np.full_like(im, 0.5)
  metrics, recons = evaluate.evaluate(fn, imgs, [1, None])
  assert metrics["all"]["psnr"] > 50 and metrics["1"]["psnr"] < 15
  grid = evaluate.image_grid(imgs, [recons["1"], recons["all"]], pad=2)
  assert grid.shape == (3 * 18 + 2, 3 * 18 + 2, 3)
  np.testing.assert_array_equal(grid[2:18, 20:36], recons["1"][0])


@pytest.mark.slow
def test_trains_on_tfds_with_discriminator_and_perceptual(tmp_path):
  """config.data.source = "tfds" (offline mock cifar10), PatchGAN + LPIPS from a weights file."""
  import json  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  from jaxtok.configs import titok  # pylint: disable=g-import-not-at-top
  from jaxtok.losses import perceptual  # pylint: disable=g-import-not-at-top
  rng, sd, cin = np.random.default_rng(0), {}, 3
  for k, convs in enumerate(perceptual.VGG16_SLICES):
    for i in convs:
      sd[f"net.slice{k + 1}.{i}.weight"] = rng.normal(0, 0.4, (3, cin, 3, 3)).astype(np.float32)
      sd[f"net.slice{k + 1}.{i}.bias"] = np.zeros(3, np.float32)
      cin = 3
    sd[f"lin{k}.model.1.weight"] = np.full((1, 3, 1, 1), 0.5, np.float32)
  save_file(sd, str(tmp_path / "lpips.safetensors"))
  c = titok.get_config("tiny")
  c.total_steps, c.final_eval, c.ckpt_every = 3, False, 3
  c.eval.token_counts = [8]
  c.data.update(source="tfds", name="cifar10", split="train", heldout_split="test")
  c.disc = ml_collections.ConfigDict(dict(channels=4, num_layers=2, num_groups=2))
  c.disc_optim = ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=0))
  c.loss.update(gan=0.1, gan_start=2, disc_start=2, lecam=0.001, perceptual=0.1)
  c.loss.perceptual_weights = str(tmp_path / "lpips.safetensors")
  work = tmp_path / "run"
  with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
    report = loop.train(c, str(work), show_progress=False)
  assert report["step"] == 3
  lines = [json.loads(l) for l in open(work / "tb" / "metrics.jsonl")]
  assert [l["disc/active"] for l in lines] == [0.0, 0.0, 1.0]
  assert lines[2]["loss/gan_g"] != 0.0 and all(l["loss/perceptual"] > 0 for l in lines)
  # The grain iterator state went into the checkpoint (3 batches read).
  saved = json.loads((work / "checkpoints" / "3" / "data" / "metadata").read_text())
  assert "next_index" in json.dumps(saved), saved
