"""tools/tokenize_images.py end to end on the tiny TiTok checkpoint: encode a folder, decode it back, decode
a tokens file, and the errors for bad arguments."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxtok.eval import checkpoints
from jaxtok.eval import images as img_lib
from jaxtok.train import checkpoint as ckpt_lib
from tests.tools.conftest import load_tool


def test_encode_and_decode_a_folder(tiny_titok, image_folder, tmp_path):
  workdir, _, tokenizer, ema, _ = tiny_titok
  tool = load_tool("tokenize_images")
  out = str(tmp_path / "tok")
  # No --config: the training checkpoint's stored config is used.
  res = tool.main(["tokenize", f"--checkpoint={workdir}", f"--input={image_folder}", f"--output={out}",
                   "--num_tokens=4", "--decode", "--batch_size=4"])
  with np.load(os.path.join(out, "tokens.npz")) as f:
    tokens, names = f["tokens"], list(f["names"])
    assert int(f["num_tokens"]) == 4 and str(f["weights"]) == "ema"
  assert tokens.dtype == np.int32 and tokens.shape == (6, 4)
  assert tokens.min() >= 0 and tokens.max() < 64
  assert names == img_lib.list_images(image_folder)
  assert names[0] == os.path.join("a", "x.png")
  # The tokens are the EMA model's encoding of the crop-fitted images ...
  images = img_lib.load_images(image_folder, names, 16)
  expected = np.asarray(tokenizer.encode(ema, jnp.asarray(images), num_tokens=4).tokens)
  np.testing.assert_array_equal(tokens, expected)
  # ... and the decoded PNGs are the tokenizer's reconstructions (8-bit).
  recon = img_lib.to_uint8(tokenizer.reconstruct(ema, jnp.asarray(images), num_tokens=4))
  for name, want in zip(names, recon):
    got = np.asarray(Image.open(os.path.join(out, "decoded", img_lib.output_name(name))))
    assert got.shape == (16, 16, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
  np.testing.assert_array_equal(res["decoded"], np.stack(
      [np.asarray(Image.open(os.path.join(out, "decoded", img_lib.output_name(n)))) for n in names]))
  assert os.path.exists(os.path.join(out, "decoded_grid.png"))

  # Decoding the tokens file again (no --config, --use_ema=false: other weights, other images).
  out2 = str(tmp_path / "dec")
  res2 = tool.main(["tokenize", f"--checkpoint={workdir}", f"--tokens={out}/tokens.npz",
                    f"--output={out2}"])
  np.testing.assert_array_equal(res2["decoded"], res["decoded"])
  res3 = tool.main(["tokenize", f"--checkpoint={workdir}", f"--tokens={out}/tokens.npz",
                    f"--output={out2}", "--use_ema=false"])
  assert not np.array_equal(res3["decoded"], res["decoded"])


def test_checkpoint_layouts_and_weights(tiny_titok, tmp_path):
  workdir, config, tokenizer, ema, raw = tiny_titok
  leaf = lambda p: np.asarray(p["latent_tokens"].get_value())
  for path in (workdir, os.path.join(workdir, "checkpoints"), os.path.join(workdir, "checkpoints", "1")):
    _, params, info = checkpoints.load_tokenizer(config, path)
    assert info["weights"] == "ema" and info["step"] == 1
    np.testing.assert_array_equal(leaf(params), leaf(ema))
  _, params, info = checkpoints.load_tokenizer(None, workdir, use_ema=False)
  assert info["weights"] == "params"
  np.testing.assert_array_equal(leaf(params), leaf(raw))
  # A bare parameter directory (converted checkpoints) needs --config.
  pdir = str(tmp_path / "params")
  ckpt_lib.save_params(pdir, raw)
  _, params, info = checkpoints.load_tokenizer(config, pdir)
  assert info["kind"] == "params"
  np.testing.assert_array_equal(leaf(params), leaf(raw))
  with pytest.raises(ValueError, match="--config is required"):
    checkpoints.load_tokenizer(None, pdir)
  # tools/convert.py's layout: OUT/params + OUT/config.json (the config is read from there).
  conv = tmp_path / "converted"
  ckpt_lib.save_params(str(conv / "params"), ema)
  (conv / "config.json").write_text(json.dumps(checkpoints.model_config(config)))
  _, params, info = checkpoints.load_tokenizer(None, str(conv))
  assert info["kind"] == "params" and info["path"] == str(conv / "params")
  np.testing.assert_array_equal(leaf(params), leaf(ema))


def test_bad_arguments_name_the_flag(tiny_titok, image_folder, tmp_path):
  workdir = tiny_titok[0]
  tool = load_tool("tokenize_images")
  base = ["tokenize", f"--output={tmp_path / 'o'}"]
  with pytest.raises(ValueError, match=r"--num_tokens must be in \[1, 8\] .*got 9"):
    tool.main(base + [f"--checkpoint={workdir}", f"--input={image_folder}", "--num_tokens=9"])
  with pytest.raises(FileNotFoundError, match="--checkpoint: expected .*does not exist"):
    tool.main(base + [f"--checkpoint={tmp_path / 'nope'}", f"--input={image_folder}"])
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "notes.txt").write_text("not an image")
  with pytest.raises(ValueError, match="--input: expected at least one image .*found 0"):
    tool.main(base + [f"--checkpoint={workdir}", f"--input={empty}"])
  with pytest.raises(ValueError, match="--checkpoint: expected .* holds none"):
    tool.main(base + [f"--checkpoint={empty}", f"--input={image_folder}"])
  with pytest.raises(ValueError, match="exactly one of --input"):
    tool.main(base + [f"--checkpoint={workdir}"])
  with pytest.raises(SystemExit, match="Unknown command line flag 'bogus'"):
    tool.main(base + ["--bogus=1"])
