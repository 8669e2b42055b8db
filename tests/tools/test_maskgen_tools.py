"""Text-to-image through the tools: official-layout tiny MaskGen-VQ and TA-TiTok files converted by
tools/convert.py, then tools/sample.py --prompt with tiny random CLIP text weights and a tiny BPE
merges file written here (every file the user would supply, none downloaded)."""
import gzip
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxtok.convert import common
from tests.convert.test_tool import _run_tool
from tests.generators.test_maskgen import official_state as maskgen_state
from tests.nn.test_clip_text import official_state as clip_state
from tests.tools.conftest import load_tool

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "official")
CLIP_W, CLIP_CTX = 64, 8  # the tiny CLIP's width (= its projection; one head) and context length
K, CODES = 6, 16          # the official tiny TiTok fixture's tokens and codebook


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("t2i")
  clip = os.path.join(root, "clip.safetensors")
  save_file(clip_state(seed=3, width=CLIP_W, depth=1, vocab=520, ctx=CLIP_CTX, dim=CLIP_W), clip)
  bpe = os.path.join(root, "bpe_simple_vocab_16e6.txt.gz")
  with gzip.open(bpe, "wb") as f:
    f.write(b"#version: 0.2\na s\nh o\np h\nph o\npho t\n")
  rng = np.random.default_rng(0)
  tok, _ = common.read_checkpoint(os.path.join(FIXTURES, "titok_vq.safetensors"))
  tok = dict(tok, **{
      "decoder.text_guidance_proj.weight": rng.normal(0, 0.3, (32, CLIP_W)).astype(np.float32),
      "decoder.text_guidance_proj.bias": np.zeros(32, np.float32),
      "decoder.text_guidance_positional_embedding": rng.normal(0, 0.2, (CLIP_CTX, 32)).astype(np.float32)})
  tok_file = os.path.join(root, "tatitok.safetensors")
  save_file(tok, tok_file)
  gen_file = os.path.join(root, "maskgen.safetensors")
  save_file(maskgen_state(width=16, text=CLIP_W, micro=4, v=CODES, k=K, classes=3), gen_file)
  tok_cfg = ('{"name": "tatitok", "image_size": 32, "patch_size": 8, "encoder_width": 32, '
             '"encoder_depth": 2, "encoder_heads": 2, "decoder_width": 32, "decoder_depth": 2, '
             '"decoder_heads": 2, "num_latent_tokens": 6, "token_size": 4, "codebook_size": 16, '
             '"use_l2_norm": true, "text_context_length": 8, "text_embed_dim": 64}')
  gen_cfg = ('{"name": "maskgen", "codebook_size": 16, "seq_len": 6, "num_classes": 3, '
             '"width": 16, "depth": 2, "heads": 2, "text_dim": 64, "micro_condition": true, '
             '"micro_condition_dim": 4}')
  _run_tool("--model=tatitok", f"--weights={tok_file}", f"--config={tok_cfg}",
            f"--out={root}/tatitok")
  _run_tool("--model=maskgen", f"--weights={gen_file}", f"--config={gen_cfg}",
            f"--out={root}/maskgen")
  return dict(root=str(root), clip=clip, bpe=bpe)


@pytest.mark.slow
def test_sample_tool_generates_from_a_prompt(files):
  root = files["root"]
  args = ["sample", f"--workdir={root}/maskgen", f"--tokenizer_checkpoint={root}/tatitok",
          "--prompt=a photo of an astronaut", "--prompt=a photo", "--num_samples=3",
          "--batch_size=2", "--steps=3", f"--out={root}/samples"]
  res = load_tool("sample").main(args + [f"--clip_weights={files['clip']}", f"--bpe={files['bpe']}"])
  assert res["prompts"] == ["a photo of an astronaut", "a photo", "a photo of an astronaut"]
  tokens = res["tokens"]
  assert tokens.shape == (3, K) and tokens.dtype == np.int32 and 0 <= tokens.min() and tokens.max() < CODES
  assert res["images"].shape == (3, 32, 32, 3) and res["images"].dtype == np.uint8
  assert os.path.exists(os.path.join(root, "samples", "images", "00002.png"))
  with np.load(os.path.join(root, "samples", "tokens.npz")) as f:
    assert list(f["prompts"]) == res["prompts"]
  # the same seed and prompts give the same tokens
  again = load_tool("sample").main(args + [f"--clip_weights={files['clip']}",
                                           f"--bpe={files['bpe']}", f"--out={root}/again"])
  np.testing.assert_array_equal(again["tokens"], tokens)
  # without the user's CLIP files, or without a prompt, it refuses clearly
  with pytest.raises(ValueError, match="CLIP text weights"):
    load_tool("sample").main(args + [f"--bpe={files['bpe']}", f"--out={root}/x"])
  with pytest.raises(ValueError, match="BPE merges file"):
    load_tool("sample").main(args + [f"--clip_weights={files['clip']}", f"--out={root}/x"])
  with pytest.raises(ValueError, match="--prompt is required"):
    load_tool("sample").main(args[:3] + args[5:] + [f"--out={root}/x"])
