"""Text-to-image with MaskGen-KL through the tools: tiny official-layout MaskGen-KL and TA-TiTok (VAE)
files converted by tools/convert.py, then tools/sample.py --prompt with the tiny random CLIP text
weights and BPE merges of tests/tools/test_maskgen_tools.py (nothing downloaded)."""
import gzip
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxtok.convert import common
from tests.convert.test_maskgen_kl import official_state as kl_state
from tests.convert.test_tool import _run_tool
from tests.nn.test_clip_text import official_state as clip_state
from tests.tools.conftest import load_tool
from tests.tools.test_maskgen_tools import CLIP_CTX, CLIP_W, FIXTURES

K, D = 6, 4  # the official tiny TiTok VAE fixture's tokens and token size


@pytest.mark.slow
def test_sample_tool_generates_continuous_tokens_from_a_prompt(tmp_path):
  root = str(tmp_path)
  clip = os.path.join(root, "clip.safetensors")
  save_file(clip_state(seed=3, width=CLIP_W, depth=1, vocab=520, ctx=CLIP_CTX, dim=CLIP_W), clip)
  bpe = os.path.join(root, "bpe.txt.gz")
  with gzip.open(bpe, "wb") as f:
    f.write(b"#version: 0.2\na s\nh o\np h\nph o\npho t\n")
  rng = np.random.default_rng(0)
  tok, _ = common.read_checkpoint(os.path.join(FIXTURES, "titok_vae.safetensors"))
  tok = dict(tok, **{
      "decoder.text_guidance_proj.weight": rng.normal(0, 0.3, (32, CLIP_W)).astype(np.float32),
      "decoder.text_guidance_proj.bias": np.zeros(32, np.float32),
      "decoder.text_guidance_positional_embedding": rng.normal(0, 0.2, (CLIP_CTX, 32)).astype(np.float32)})
  save_file(tok, os.path.join(root, "tatitok.safetensors"))
  save_file(kl_state(text=CLIP_W, k=K, d=D), os.path.join(root, "maskgen_kl.safetensors"))
  tok_cfg = ('{"name": "tatitok", "quantizer": "vae", "image_size": 32, "patch_size": 8, '
             '"encoder_width": 32, "encoder_depth": 2, "encoder_heads": 2, "decoder_width": 32, '
             '"decoder_depth": 2, "decoder_heads": 2, "num_latent_tokens": 6, "token_size": 4, '
             '"codebook_size": 16, "use_l2_norm": true, "text_context_length": 8, '
             '"text_embed_dim": 64}')
  gen_cfg = ('{"name": "maskgen_kl", "token_dim": 4, "seq_len": 6, "width": 16, "depth": 2, '
             '"heads": 2, "text_dim": 64, "micro_condition": true, "micro_condition_dim": 4, '
             '"head_width": 12, "head_depth": 2}')
  _run_tool("--model=tatitok", f"--weights={root}/tatitok.safetensors", f"--config={tok_cfg}",
            f"--out={root}/tatitok")
  _run_tool("--model=maskgen_kl", f"--weights={root}/maskgen_kl.safetensors",
            f"--config={gen_cfg}", f"--out={root}/maskgen_kl")
  args = ["sample", f"--workdir={root}/maskgen_kl", f"--tokenizer_checkpoint={root}/tatitok",
          "--prompt=a photo of an astronaut", "--prompt=a photo", "--num_samples=3",
          "--batch_size=2", "--steps=3", f"--out={root}/samples",
          f"--clip_weights={clip}", f"--bpe={bpe}"]
  res = load_tool("sample").main(args)
  tokens = res["tokens"]
  assert tokens.shape == (3, K, D) and tokens.dtype == np.float32 and np.isfinite(tokens).all()
  assert res["images"].shape == (3, 32, 32, 3) and res["images"].dtype == np.uint8
  assert os.path.exists(os.path.join(root, "samples", "images", "00002.png"))
