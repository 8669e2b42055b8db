"""tools/compress.py, tools/decompress.py and tools/codec_eval.py on a tiny run and its priors."""
import json
import os

import numpy as np
import pytest

from jaxtok.codec import prior_training
from jaxtok.eval import images as img_lib
from tests.tools.conftest import load_tool


@pytest.fixture(scope="module")
def folder(fitted, tmp_path_factory):
  run, _, _ = fitted
  images = prior_training.heldout_images(prior_training.run_data_config(run), 3)
  d = tmp_path_factory.mktemp("imgs")
  for i, im in enumerate(images):
    img_lib.save_png(str(d / f"im{i}.png"), im)
  return str(d), images


def test_compress_decompress_round_trip_and_checks(fitted, folder, tmp_path):
  run, prior, _ = fitted
  src, images = folder
  comp, decomp = load_tool("compress"), load_tool("decompress")
  common = [f"--checkpoint={run}", f"--prior={prior}"]
  summary = comp.main(["compress", *common, f"--input={src}", f"--output={tmp_path / 'jtk'}"])
  files = summary["files"]
  assert sorted(files) == ["im0.jtk", "im1.jtk", "im2.jtk"]
  assert all(os.path.getsize(tmp_path / "jtk" / n) == f["bytes"] for n, f in files.items())
  used = decomp.main(["decompress", *common, f"--input={tmp_path / 'jtk'}",
                      f"--output={tmp_path / 'png'}"])
  model = prior_training.load_model(run, prior, "causal")
  from jaxtok.codec import image_codec
  want = image_codec.detokenize(model, image_codec.tokenize(model, images))
  for i in range(3):
    got = img_lib.read_image(str(tmp_path / "png" / f"im{i}.png"))
    np.testing.assert_array_equal(got, want[i])
    assert used[f"im{i}.jtk"] == model.tokenizer.max_tokens
  # another prior kind cannot read them
  with pytest.raises(ValueError, match="im0.jtk: the file was coded with model"):
    decomp.main(["decompress", *common, "--prior_kind=unigram", f"--input={tmp_path / 'jtk'}",
                 f"--output={tmp_path / 'x'}"])
  budget = comp.main(["compress", *common, f"--input={src}", f"--output={tmp_path / 'b'}",
                      "--max_bytes=13"])
  assert all(f["bytes"] <= 13 or not f["reached"] for f in budget["files"].values())
  s = model.tokenizer.image_size
  tiled = comp.main(["compress", *common, f"--input={src}", f"--output={tmp_path / 't'}",
                     f"--size={2 * s}", "--num_tokens=3"])
  out = decomp.main(["decompress", *common, f"--input={tmp_path / 't'}", f"--output={tmp_path / 'tp'}"])
  assert set(out.values()) == {4 * 3}                     # 2 x 2 tiles, 3 tokens each
  assert img_lib.read_image(str(tmp_path / "tp" / "im0.png")).shape == (2 * s, 2 * s, 3)
  assert all(f["num_tokens"] == 3 for f in tiled["files"].values())
  with pytest.raises(ValueError, match="at most one of"):
    comp.main(["compress", *common, f"--input={src}", f"--output={tmp_path / 'c'}",
               "--max_bytes=13", "--target_psnr=20"])


def test_codec_eval_reports_whole_file_sizes(fitted, tmp_path):
  run, prior, _ = fitted
  result = load_tool("codec_eval").main(["codec_eval", f"--checkpoint={run}", f"--prior={prior}",
                                         f"--out={tmp_path}", "--heldout=2", "--counts=1,4"])
  rows = result["rows"]
  assert [r["num_tokens"] for r in rows] == [1, 4]
  for r in rows:
    for kind in prior_training.KINDS:
      assert r[f"{kind}_bytes"] >= result["header_bytes"]
    assert r["jpeg_bytes"] > 100                   # whole JPEG files: headers and tables count
  uni = result["bits_per_token"]["uniform"]
  assert uni["ideal"] == pytest.approx(8 * rows[0]["token_bytes"], abs=1e-3)   # log2 K per token
  with open(tmp_path / "rate_distortion.json") as f:
    assert json.load(f)["targets"] == result["targets"]
  assert os.path.exists(tmp_path / "rate_distortion.png")
  s = prior_training.run_data_config(run)["image_size"]
  tiled = load_tool("codec_eval").main(["codec_eval", f"--checkpoint={run}", f"--prior={prior}",
                                        f"--out={tmp_path / 't'}", "--heldout=1", "--counts=2",
                                        f"--image_size={2 * s}", "--max_scale=1"])
  row = tiled["rows"][0]
  # 2 x 2 tiles in one file, 2 tokens each: the raw rate is 4 x 2 x log2 K bits, the uniform prior's
  # file that many bits (whole bytes, within 2 bits) plus one 10-byte header.
  assert row["token_bytes"] == pytest.approx(8 * uni["ideal"] / 8, rel=1e-3)   # 8 tokens x log2 K bits
  assert abs(row["uniform_bytes"] - 10 - row["token_bytes"]) <= 1
  # Unseen photographs (--heldout keeps the first grid crop), coded as whole tiles of the run's size.
  unseen = load_tool("codec_eval").main(["codec_eval", f"--checkpoint={run}", f"--prior={prior}",
                                         f"--out={tmp_path / 'u'}", "--images=unseen", "--heldout=1",
                                         "--counts=1", f"--image_size={2 * s}"])
  row = unseen["rows"][0]
  assert abs(row["uniform_bytes"] - 10 - 4 * uni["ideal"] / 8) <= 1   # 2 x 2 tiles, 1 token each
