"""Loop pieces: TensorBoard framing (CRC32C), NaN guard, data wiring, eval grid."""
import struct

import numpy as np
import pytest

from jaxtok.train import evaluate
from jaxtok.train import loop


def test_crc32c_and_tfrecord_framing():
  assert loop.crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
  assert loop.crc32c(b"") == 0
  ev = loop.encode_event(1.5, 7, scalars={"loss": 0.25})
  rec = loop.tfrecord(ev)
  (length,) = struct.unpack("<Q", rec[:8])
  assert length == len(ev) and rec[12:12 + length] == ev and len(rec) == length + 16
  (crc,) = struct.unpack("<I", rec[-4:])
  c = loop.crc32c(ev)
  assert crc == ((((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF)
  # Event: field 1 double wall_time, field 2 varint step, field 5 the summary with tag and float.
  assert ev[0] == 0x09 and struct.unpack("<d", ev[1:9])[0] == 1.5 and ev[9:11] == b"\x10\x07"
  assert b"loss" in ev and struct.pack("<f", 0.25) in ev


def test_event_writer_files(tmp_path):
  w = loop.EventWriter(str(tmp_path))
  w.scalars(3, {"a": 1.0})
  w.close()
  files = sorted(p.name for p in tmp_path.iterdir())
  assert files[0].startswith("events.out.tfevents") and "metrics.jsonl" in files
  assert (tmp_path / "metrics.jsonl").read_text().strip() == '{"step": 3, "a": 1.0}'


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
  x = np.zeros((2, 16, 16, 3), np.float32)
  y = x + 0.1
  np.testing.assert_allclose(np.asarray(evaluate.psnr(x, y)), 20.0, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(evaluate.ssim(x + 0.5, x + 0.5)), 1.0, rtol=1e-6)
  assert float(np.asarray(evaluate.ssim(x + 0.5, np.flip(x + np.linspace(0, 1, 16)[:, None, None], 1)))[0]) < 0.9
  # k=None reconstructs exactly; k=1 returns a constant 0.5 image.
  imgs = np.random.default_rng(0).random((3, 16, 16, 3)).astype(np.float32)
  fn = lambda im, k: im if k is None else np.full_like(im, 0.5)
  metrics, recons = evaluate.evaluate(fn, imgs, [1, None])
  assert metrics["all"]["psnr"] > 50 and metrics["1"]["psnr"] < 15
  grid = evaluate.image_grid(imgs, [recons["1"], recons["all"]], pad=2)
  assert grid.shape == (3 * 18 + 2, 3 * 18 + 2, 3)
  np.testing.assert_array_equal(grid[2:18, 20:36], recons["1"][0])
