"""MaskGen-VQ: converter parity with a numpy forward of the official model, the MaskGen guidance
schedules, sampling, and a tiny training run whose loss falls.

The numpy reference is written here from bytedance/1d-tokenizer modeling/maskgen.py (MaskGen_VQ) and
diffusers' JointTransformerBlock / JointAttnProcessor2_0 / AdaLayerNormZero / AdaLayerNormContinuous /
FeedForward("gelu-approximate"), on a tiny random state dict of the official layout.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from jaxtok.convert import maskgen as C
from jaxtok.generators import maskgen as M
from jaxtok.samplers import maskgit_released

W, HEADS, DEPTH, V, K, CLASSES, TEXT, MICRO, T = 16, 2, 2, 10, 6, 3, 8, 4, 5
CONFIG = dict(name="maskgen", codebook_size=V, seq_len=K, num_classes=CLASSES, width=W,
              depth=DEPTH, heads=HEADS, text_dim=TEXT, micro_condition=True,
              micro_condition_dim=MICRO, text_drop_prob=0.1, sample_aesthetic_score=6.5)


def official_state(seed=0, depth=DEPTH, *, width=W, text=TEXT, micro=MICRO, v=V, k=K,
                   classes=CLASSES):
  rng = np.random.default_rng(seed)
  n = lambda *s: rng.normal(0, 0.3, s).astype(np.float32)
  lin = lambda name, o, i: {f"{name}.weight": n(o, i), f"{name}.bias": n(o)}
  W = width
  sd = {"embeddings.weight": n(v + 2 + classes, W), "pos_embed": n(1, k, W)}
  sd.update(lin("text_embed_proj", W, text))
  sd.update(lin("cond_pooled_proj", W, text + micro))
  sd.update(lin("norm.linear", 2 * W, W))
  for i in range(depth):
    last = i == depth - 1
    p = f"blocks.{i}."
    sd.update(lin(p + "norm1.linear", 6 * W, W))
    sd.update(lin(p + "norm1_context.linear", (2 if last else 6) * W, W))
    for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0"):
      sd.update(lin(p + "attn." + name, W, W))
    sd.update(lin(p + "ff.net.0.proj", 4 * W, W))
    sd.update(lin(p + "ff.net.2", W, 4 * W))
    if not last:
      sd.update(lin(p + "attn.to_add_out", W, W))
      sd.update(lin(p + "ff_context.net.0.proj", 4 * W, W))
      sd.update(lin(p + "ff_context.net.2", W, 4 * W))
  sd["lm_head.weight"] = sd["embeddings.weight"].copy()  # WeightTiedLMHead: the whole table
  return sd


def _ln(x, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(((x - mu)**2).mean(-1, keepdims=True) + eps)


def _silu(x):
  return x / (1 + np.exp(-x))


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def joint_blocks(sd, x, c, p, depth, heads=HEADS, prefix="blocks"):
  """numpy float64 diffusers JointTransformerBlocks `{prefix}.i` (the last context-pre-only) over
  image tokens x [B, K, W] and text c [B, T, W] conditioned on p [B, W] -> x. Also MaskGen-KL's
  reference (tests/convert/test_maskgen_kl.py)."""
  lin = lambda name, x: x @ sd[name + ".weight"].T + sd[name + ".bias"]
  b, k, w = x.shape
  e = w // heads
  split_heads = lambda t: t.reshape(b, t.shape[1], heads, e)
  for i in range(depth):
    q = lambda n: f"{prefix}.{i}.{n}"
    last = i == depth - 1
    sh, sc, g, sh2, sc2, g2 = np.split(lin(q("norm1.linear"), _silu(p)), 6, -1)
    nx = _ln(x) * (1 + sc[:, None]) + sh[:, None]
    if last:
      scale, shift = np.split(lin(q("norm1_context.linear"), _silu(p)), 2, -1)
      nc = _ln(c) * (1 + scale[:, None]) + shift[:, None]
    else:
      csh, csc, cg, csh2, csc2, cg2 = np.split(lin(q("norm1_context.linear"), _silu(p)), 6, -1)
      nc = _ln(c) * (1 + csc[:, None]) + csh[:, None]
    qkv = [np.concatenate([split_heads(lin(q(f"attn.to_{n}"), nx)),
                           split_heads(lin(q(f"attn.add_{n}_proj"), nc))], 1) for n in "qkv"]
    s = np.einsum("bthe,bshe->bhts", qkv[0], qkv[1]) / np.sqrt(e)
    s = np.exp(s - s.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    o = np.einsum("bhts,bshe->bthe", s, qkv[2]).reshape(b, -1, w)
    ox, oc = o[:, :k], o[:, k:]
    x = x + g[:, None] * lin(q("attn.to_out.0"), ox)
    nx = _ln(x) * (1 + sc2[:, None]) + sh2[:, None]
    x = x + g2[:, None] * lin(q("ff.net.2"), _gelu_tanh(lin(q("ff.net.0.proj"), nx)))
    if not last:
      c = c + cg[:, None] * lin(q("attn.to_add_out"), oc)
      nc = _ln(c) * (1 + csc2[:, None]) + csh2[:, None]
      c = c + cg2[:, None] * lin(q("ff_context.net.2"), _gelu_tanh(lin(q("ff_context.net.0.proj"), nc)))
  return x


def reference(sd, ids, text, pooled, aes, depth=DEPTH):
  """numpy float64 MaskGen_VQ.forward (eval) -> logits [B, K, V]."""
  sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  lin = lambda name, x: x @ sd[name + ".weight"].T + sd[name + ".bias"]
  x = sd["embeddings.weight"][ids] + sd["pos_embed"][0]
  c = lin("text_embed_proj", text)
  half = MICRO // 2
  freqs = np.exp(-np.log(1000) * np.arange(half) / half)
  arg = (aes * 100)[:, None] * freqs
  p = lin("cond_pooled_proj", np.concatenate([pooled, np.sin(arg), np.cos(arg)], -1))
  x = joint_blocks(sd, x, c, p, depth)
  scale, shift = np.split(lin("norm.linear", _silu(p)), 2, -1)
  x = _ln(x) * (1 + scale[:, None]) + shift[:, None]
  return x @ sd["embeddings.weight"][:V].T


def _inputs(seed=1, b=2):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, V + 1, (b, K)).astype(np.int32)
  return (ids, rng.normal(0, 1, (b, T, TEXT)).astype(np.float32),
          rng.normal(0, 1, (b, TEXT)).astype(np.float32), np.asarray([6.5, 5.0][:b], np.float32))


@functools.lru_cache(maxsize=None)
def _converted(tmp="/tmp"):
  import os
  sd = official_state()
  path = os.path.join(tmp, f"jaxtok_test_maskgen_{os.getpid()}.safetensors")
  save_file(sd, path)
  cfg, params = C.load(path, dict(CONFIG))
  os.remove(path)
  return sd, cfg, C.build(cfg, params)


def test_converted_maskgen_matches_the_official_forward():
  sd, cfg, model = _converted()
  assert cfg["name"] == "maskgen"
  ids, text, pooled, aes = _inputs()
  got = jax.jit(lambda m, i, c: m(i, c))(model, jnp.asarray(ids), {
      "text": jnp.asarray(text), "pooled": jnp.asarray(pooled), "aesthetic": jnp.asarray(aes)})
  want = reference(sd, ids, text.astype(np.float64), pooled.astype(np.float64), aes.astype(np.float64))
  assert got.shape == (2, K, V) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)


def test_inferred_config_and_refusals(tmp_path):
  sd = official_state()
  big = official_state(v=20, classes=1000, depth=1)
  cfg = C.infer_config(big)
  assert (cfg["codebook_size"], cfg["num_classes"], cfg["depth"], cfg["micro_condition_dim"]) == (
      20, 1000, 1, MICRO)
  # a file whose shared tensors were deduplicated to lm_head.weight alone converts the same
  only_head = {k: v for k, v in sd.items() if k != "embeddings.weight"}
  np.testing.assert_array_equal(C.convert(only_head, CONFIG)["embeddings"], sd["embeddings.weight"])
  assert C.resolve_config("generator_maskgen_vq_xl")["width"] == 1280
  bad = dict(sd, **{"lm_head.weight": sd["lm_head.weight"] + 1})
  with pytest.raises(ValueError, match="tied"):
    C.convert(bad, CONFIG)
  path = tmp_path / "bad.safetensors"
  del sd["blocks.0.attn.to_add_out.bias"]
  save_file(sd, str(path))
  with pytest.raises(ValueError, match=r"missing keys \[blocks.0.context.attn.out_bias\]"):
    C.load(path, dict(CONFIG))
  with pytest.raises(ValueError, match="scan_layers"):
    M.make_model(dict(CONFIG, scan_layers=True), rngs=nnx.Rngs(0))


def test_text_changes_the_logits_and_the_null_caption_drop():
  _, _, model = _converted()
  ids, text, pooled, aes = _inputs()
  cond = {"text": jnp.asarray(text), "pooled": jnp.asarray(pooled), "aesthetic": jnp.asarray(aes)}
  a = model(jnp.asarray(ids), cond)
  b = model(jnp.asarray(ids), dict(cond, text=cond["text"][::-1]))
  assert float(jnp.max(jnp.abs(a[0] - b[0]))) > 1e-3
  null = {"null_text": jnp.zeros_like(cond["text"]), "null_pooled": jnp.zeros_like(cond["pooled"])}
  dropped = M.drop_text(dict(cond, **null), 1.0, jax.random.key(0))
  assert float(jnp.abs(dropped["text"]).max()) == 0 and "null_text" not in dropped
  kept = M.drop_text(dict(cond, **null), 0.0, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(kept["pooled"]), pooled)


def test_maskgen_guidance_schedules_by_hand():
  g, steps = 12.0, 4
  r = np.arange(1, steps + 1) / steps
  cos = maskgit_released.step_tables(8, steps, 2.0, True, g, "maskgen_cosine", 1.0)["scale"]
  np.testing.assert_allclose(np.asarray(cos), (g - 1) * (1 - np.cos(np.pi * r)) / 2 + 1, rtol=1e-6)
  lin = maskgit_released.step_tables(8, steps, 2.0, True, g, "maskgen_linear", 1.0)["scale"]
  np.testing.assert_allclose(np.asarray(lin), r * (g - 1) + 1, rtol=1e-6)
  with pytest.raises(ValueError, match="maskgen_cosine"):
    maskgit_released.sample(jax.random.key(0), lambda t: jnp.zeros(t.shape + (3,)),
                            jnp.full((1, 2), 3, jnp.int32), mask_id=3, guidance_decay="cosine")


def test_guided_sampling_fills_every_token_and_depends_on_the_caption():
  _, _, model = _converted()
  _, text, pooled, _ = _inputs()
  cond = {"text": jnp.asarray(text), "pooled": jnp.asarray(pooled)}
  null = {"text": jnp.zeros((1, T, TEXT)), "pooled": jnp.zeros((1, TEXT))}
  run = jax.jit(lambda m, c, n, key: M.sample(m, key, c, n, steps=4))
  out = np.asarray(run(model, cond, null, jax.random.key(0)))
  assert out.shape == (2, K) and out.dtype == np.int32 and out.min() >= 0 and out.max() < V
  np.testing.assert_array_equal(out, np.asarray(run(model, cond, null, jax.random.key(0))))
  greedy = jax.jit(lambda m, c, key: M.sample(m, key, c, None, steps=4, randomize_temperature=0.0))
  a = np.asarray(greedy(model, cond, jax.random.key(0)))
  others = [np.asarray(greedy(model, {"text": jnp.asarray(t), "pooled": jnp.asarray(p)},
                              jax.random.key(0))) for _, t, p, _ in (_inputs(s) for s in (2, 3, 4))]
  assert any(not np.array_equal(a, o) for o in others)  # another caption, other tokens


@pytest.mark.slow
def test_tiny_maskgen_loss_falls_with_captions():
  """The generator trainer's step (train.generator.make_train_step) on fixed tokens with two
  captions' features: 30 steps of AdamW, the masked cross-entropy falls."""
  import optax
  from jaxtok.train import generator, state as state_lib
  cfg = dict(CONFIG, depth=1, text_drop_prob=0.1)
  model = state_lib.model_def(lambda rngs: M.make_model(cfg, rngs=rngs))
  tx = optax.adam(3e-3)
  state = {"step": jnp.zeros((), jnp.int32), "params": model.init(jax.random.key(0))}
  state["opt_state"] = tx.init(state["params"])
  step = jax.jit(generator.make_train_step("maskgen", model, tx))
  rng = np.random.default_rng(0)
  text = rng.normal(0, 1, (2, T, TEXT)).astype(np.float32)
  pooled = rng.normal(0, 1, (2, TEXT)).astype(np.float32)
  tokens = np.stack([np.arange(K) % V, (np.arange(K) * 3 + 1) % V]).astype(np.int32)
  rows = np.arange(8) % 2  # 8 samples: each caption with its own token sequence
  batch = {"tokens": jnp.asarray(tokens[rows]), "label": {
      "text": jnp.asarray(text[rows]), "pooled": jnp.asarray(pooled[rows]),
      "null_text": jnp.zeros((8, T, TEXT)), "null_pooled": jnp.zeros((8, TEXT))}}
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch, jax.random.key(1))
    losses.append(float(metrics["loss"]))
  assert np.isfinite(losses).all() and np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
