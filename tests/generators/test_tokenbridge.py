"""TokenBridge: frequency channel ordering by hand, the adaLN channel head's causality / cache /
guidance, sampled latents on the quantization grid, and the tiny config through the tools."""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.generators import heads, tokenbridge


def test_frequency_order_by_hand():
  n = 8
  pos = np.arange(n)
  # Channel 0: pure Nyquist (+1, -1, ...), all energy at frequency 1 -> ratio 0.
  # Channel 1: one cosine period over 8 tokens, frequency 1/8 = 0.25 of Nyquist -> ratio 1.
  # Channel 2: equal parts of both -> ratio 1/2. Channel 3: a constant (no energy): ratio 1, tie
  # with channel 1 broken by index.
  x = np.stack([(-1.0) ** pos, np.cos(2 * np.pi * pos / n),
                (-1.0) ** pos + np.cos(2 * np.pi * pos / n), np.full(n, 3.0)], -1)[None]
  assert tokenbridge.frequency_order(x) == (1, 3, 2, 0)
  # A 2 x 4 grid (radius = |(fy, fx)| / sqrt(2) in Nyquist units): channel 0 alternates along the
  # columns (fx = Nyquist, radius 0.71), channel 1 is one cosine period over 4 columns (fx = 1/2
  # Nyquist, radius 0.35), channel 2 differs between the two rows (fy = Nyquist, radius 0.71) but
  # +1 / -1 by row: all energy at radius 0.71. Under cutoff 0.4
  # only channel 1 is low: ratios (0, 1, 0), so (1, 0, 2).
  g = np.stack([np.tile([1.0, -1.0, 1.0, -1.0], 2), np.tile(np.cos(2 * np.pi * np.arange(4) / 4), 2),
                np.repeat([1.0, -1.0], 4)], -1)[None]
  assert tokenbridge.frequency_order(g, grid=(2, 4), cutoff=0.4) == (1, 0, 2)
  with pytest.raises(ValueError, match="must multiply"):
    tokenbridge.frequency_order(g, grid=(3, 3))
  with pytest.raises(ValueError, match=r"tokens must be \[B, N, D\]"):
    tokenbridge.frequency_order(np.zeros((4, 3)))


@pytest.fixture(scope="module")
def head():
  """The adaLN head built abstractly (no eager init compile), to be filled by `_randomize`."""
  return nnx.eval_shape(lambda: heads.DimwiseARHead(
      num_channels=4, levels=5, cond_dim=6, width=16, depth=2, heads=2, order=(2, 0, 3, 1),
      adaln=True, rngs=nnx.Rngs(0)))


def _randomize(module, seed):
  """N(0, 0.3^2) values in every parameter (adaLN-zero would hide the conditioning at init)."""
  graphdef, state = nnx.split(module)
  rng = np.random.default_rng(seed)
  state = jax.tree.map(lambda x: jnp.asarray(0.3 * rng.normal(size=x.shape), x.dtype), state)
  return nnx.merge(graphdef, state)


def test_adaln_head_is_causal_over_channel_order_and_conditioned(head):
  h = _randomize(head, 1)
  call = jax.jit(lambda z, t: h(z, t))
  z = jax.random.normal(jax.random.key(0), (3, 6))
  t = jax.random.randint(jax.random.key(1), (3, 4), 0, 5)
  logits = call(z, t)
  assert logits.shape == (3, 4, 5)
  # Channel 3 is third in the order (2, 0, 3, 1): only channel 1 (fourth) may see it.
  l2 = call(z, t.at[:, 3].set((t[:, 3] + 1) % 5))
  np.testing.assert_allclose(logits[:, [2, 0, 3]], l2[:, [2, 0, 3]], atol=1e-5)
  assert not np.allclose(logits[:, 1], l2[:, 1])
  # The first channel in the order sees only z; changing z changes it.
  assert not np.allclose(logits[:, 2], call(z + 1.0, t)[:, 2])


def test_adaln_head_cached_sampling_and_guidance(head):
  h = _randomize(head, 2)
  call = jax.jit(lambda z, t: h(z, t))
  z = jax.random.normal(jax.random.key(0), (3, 6))
  zu = jax.random.normal(jax.random.key(3), (3, 6))

  @jax.jit
  def draws(key):
    return (h.sample(key, z, temperature=0.0), h.sample(key, z, top_k=3),
            h.sample(key, z, top_k=3, z_uncond=zu, cfg_scale=1.0),
            h.sample(key, z, temperature=0.0, z_uncond=zu, cfg_scale=5.0))

  greedy, plain, neutral, g = draws(jax.random.key(7))
  # Greedy cached decoding is a fixed point of teacher forcing (cache == recompute under adaLN).
  np.testing.assert_array_equal(jnp.argmax(call(z, greedy), -1), greedy)
  # Guidance at its neutral scale is the conditional model exactly (same keys, same draws).
  np.testing.assert_array_equal(neutral, plain)
  # A large scale moves the greedy choice to argmax(c + (s - 1)(c - u)) of the first channel.
  c, u = call(z, g)[:, 2], call(zu, g)[:, 2]
  np.testing.assert_array_equal(g[:, 2], jnp.argmax(c + 4.0 * (c - u), -1))


@pytest.mark.slow
def test_tiny_trains_with_falling_loss_then_samples_through_the_tools(tmp_path):
  """A float token dataset (8 tokens x 4 channels), tools/train_generator (16 steps at lr 1e-2:
  the loss ends well under ln 8, the loss of the near-uniform head at initialisation: its output
  projection is N(0, 0.02^2)), tools/sample with a tiny VAE: latents on the grid."""
  from jaxtok.configs import vae
  from jaxtok.data import tokens as token_data
  from jaxtok.tokenizers import api
  from tests.tools.conftest import load_tool, random_like, save_train_checkpoint
  tok_cfg = vae.get_config("tiny")
  tokenizer = api.build(tok_cfg.model)
  tok_dir = str(tmp_path / "vae")
  raw = random_like(tokenizer.abstract_params(), seed=2)
  save_train_checkpoint(tok_dir, {"step": jnp.int32(1), "params": raw}, tok_cfg)
  rng = np.random.default_rng(0)
  # Two modes of structured latents so there is something to learn.
  base = rng.normal(size=(2, 8, 4)) * 1.5
  labels = rng.integers(0, 2, 32)
  data = base[labels] + 0.05 * rng.normal(size=(32, 8, 4))
  data_dir = str(tmp_path / "data")
  token_data.write_token_dataset(data_dir, data.astype(np.float32), labels,
                                 meta={"tokenizer": {"checkpoint": tok_dir}})
  train, sample = load_tool("train_generator"), load_tool("sample")
  workdir = str(tmp_path / "tb")
  cfg = "--config=" + os.path.join("configs", "tokenbridge_vae.py") + ":tiny"
  over = ["--config.model.num_classes=2", "--config.total_steps=16", "--config.ckpt_every=16",
          "--config.optim.lr=1e-2"]
  last = train.main(["train_generator", cfg, f"--workdir={workdir}", f"--data={data_dir}"] + over)
  assert np.isfinite(last["loss"]) and last["loss"] < math.log(8) - 0.3, last
  res = sample.main(["sample", cfg, f"--workdir={workdir}", f"--out={tmp_path / 'samples'}",
                     "--num_samples=3", "--batch_size=3", "--labels=0,1", "--cfg_scale=2.0",
                     "--top_k=4", "--steps=3", f"--tokenizer_checkpoint={tok_dir}"] + over[:1])
  out = res["tokens"]
  assert out.shape == (3, 8, 4) and out.dtype == np.float32
  # Every sampled latent is a dequantized level: quantize -> dequantize gives it back exactly.
  from jaxtok.quantizers import dimwise
  spec = dimwise.standard_normal(4, bits=3, std_range=3.0, value_range=5.0)
  idx = dimwise.quantize(jnp.asarray(out), spec).indices
  assert int(idx.min()) >= 0 and int(idx.max()) < 8
  np.testing.assert_array_equal(np.asarray(dimwise.indices_to_codes(idx, spec)), out)
  assert res["images"].shape == (3, 16, 16, 3)


def test_bad_config_and_inputs():
  with pytest.raises(ValueError, match=r"unknown tokenbridge config key\(s\) \['codebook_size'\]"):
    tokenbridge.make_model({"name": "tokenbridge", "token_dim": 4, "seq_len": 8,
                            "codebook_size": 16}, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="bits must be <= 16, got 20"):
    tokenbridge.TokenBridge(token_dim=4, seq_len=8, bits=20, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="cutoff must be in"):
    tokenbridge.frequency_order(np.zeros((1, 4, 2)), cutoff=0.0)
