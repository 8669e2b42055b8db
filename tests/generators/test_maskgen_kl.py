"""MaskGen-KL: the loss as the release defines it, its sampling schedule and guidance, errors, and a
tiny model whose loss falls. (Converter parity: tests/convert/test_maskgen_kl.py.)"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.generators import maskgen_kl as M
from jaxtok.samplers import ddpm, mar

W, HEADS, DEPTH, K, D, TEXT, MICRO, T, HW = 16, 2, 2, 6, 4, 8, 4, 5, 16
CONFIG = dict(name="maskgen_kl", token_dim=D, seq_len=K, width=W, depth=DEPTH, heads=HEADS,
              text_dim=TEXT, micro_condition=True, micro_condition_dim=MICRO, text_drop_prob=0.1,
              head_width=HW, head_depth=2, diffusion_batch_mul=2)


@functools.lru_cache(maxsize=None)
def _model(depth=DEPTH):
  return M.make_model(dict(CONFIG, depth=depth), rngs=nnx.Rngs(0))


def _cond(b=2, seed=1, null=False):
  rng = np.random.default_rng(seed)
  c = {"text": jnp.asarray(rng.normal(size=(b, T, TEXT)), jnp.float32),
       "pooled": jnp.asarray(rng.normal(size=(b, TEXT)), jnp.float32),
       "aesthetic": jnp.asarray([6.5, 5.0][:b], jnp.float32)}
  if null:
    c.update(null_text=jnp.zeros((b, T, TEXT)), null_pooled=jnp.zeros((b, TEXT)))
  return c


def test_aesthetic_embedding_interleaves_sin_and_cos():
  got = np.asarray(M.aesthetic_embedding(jnp.asarray([6.5, 0.01]), 6))
  arg = np.asarray([650.0, 1.0])[:, None] * 10000.0 ** (-np.arange(0, 6, 2) / 6)
  np.testing.assert_allclose(got[:, 0::2], np.sin(arg), atol=2e-4)
  np.testing.assert_allclose(got[:, 1::2], np.cos(arg), atol=2e-4)


def test_training_mask_is_one_ceil_arccos_count_per_batch():
  for seed in range(5):
    mask = np.asarray(M.training_mask(jax.random.key(seed), 3, 7))
    ru, _ = jax.random.split(jax.random.key(seed))
    u = float(jax.random.uniform(ru, ()))
    want = int(np.ceil(7 * np.clip(np.arccos(u) / (np.pi / 2), 1e-6, 1)))
    assert (mask.sum(1) == want).all()


@pytest.mark.slow
def test_loss_is_the_masked_mean_of_the_hybrid_terms():
  """loss == the release's definition rebuilt from its parts with the same keys: latents x scale,
  the batch mask, z, the DDPM terms on every token repeated mul times, averaged over masked rows
  only (unmasked rows' terms differ, so a mean over all rows would not match)."""
  model = _model()
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.normal(size=(2, K, D)), jnp.float32)
  labels = _cond(null=True)

  @jax.jit
  def both(model, tokens, labels, key):
    value, metrics = M.loss(model, tokens, labels, rng=key, train=False)
    r_mask, _, _, r_diff = jax.random.split(key, 4)
    x = tokens * 0.7525
    mask = M.training_mask(r_mask, 2, K)
    cond = {k: v for k, v in labels.items() if not k.startswith("null_")}
    z = model.condition(x, mask, cond)
    terms = ddpm.loss_terms(model.head_fn, ddpm.make(1000), jnp.tile(x.reshape(-1, D), (2, 1)),
                            jnp.tile(z.reshape(2 * K, -1), (2, 1)), r_diff)
    return value, metrics, terms["loss"], jnp.tile(mask.reshape(-1), 2)

  value, metrics, per, w = (np.asarray(a) if not isinstance(a, dict) else a
                            for a in both(model, tokens, labels, jax.random.key(3)))
  assert 0 < w.sum() < w.size
  np.testing.assert_allclose(float(value), per[w].mean(), rtol=1e-5)
  assert abs(per[w].mean() - per.mean()) > 1e-4
  np.testing.assert_allclose(float(metrics["mse"] + metrics["vb"]), float(value), rtol=1e-5)
  x = tokens * 0.7525
  # Posterior moments [B, K, 2D] are sampled: logvar -30 gives the mean back.
  moments = jnp.concatenate([tokens, jnp.full_like(tokens, -30.0)], -1)
  np.testing.assert_allclose(np.asarray(model.latents(moments, jax.random.key(0))),
                             np.asarray(x), atol=1e-5)


def test_sampling_schedule_counts_and_guidance_ratio_by_hand():
  """The release's loop: iteration s leaves max(1, min(left - 1, floor(N cos(pi/2 (s+1)/S))))
  masked (the last reveals all), guidance 1 + (g - 1)(N - that) / N (so (N-1)/N at the last)."""
  n, g = 6, 3.0
  for steps in (n, 3, 2):
    left, want_counts, want_scale = n, [], []
    for s in range(steps):
      mask_len = max(1, min(left - 1, int(np.floor(n * np.cos(np.pi / 2 * (s + 1) / steps)))))
      new_left = 0 if s == steps - 1 else mask_len
      want_counts.append(left - new_left)
      want_scale.append(1 + (g - 1) * (n - mask_len) / n)
      left = new_left
    # The head sampler writes the guidance scale it was given into the new tokens.
    out = mar.sample(jax.random.key(0), lambda tok, m, c: jnp.zeros(tok.shape[:2] + (3,)), None,
                     batch=2, num_tokens=n, token_dim=1, steps=steps, head_steps=1,
                     cond=jnp.zeros((2,)), uncond=jnp.ones((2,)), cfg_scale=g,
                     head_sampler=lambda key, zc, zu, scale: jnp.full((zc.shape[0], 1), scale),
                     cfg_min_masked=1)
    step = np.asarray(out.step)
    for b in range(2):
      np.testing.assert_array_equal(np.bincount(step[b], minlength=steps), want_counts)
      np.testing.assert_allclose(np.asarray(out.tokens)[b, :, 0], np.asarray(want_scale)[step[b]],
                                 rtol=1e-6)
    if steps == n:
      assert want_counts == [1] * n  # num_steps = K: one token per iteration
  with pytest.raises(ValueError, match="cfg_min_masked"):
    mar.sample(jax.random.key(0), None, None, batch=1, num_tokens=4, token_dim=1, steps=2,
               head_steps=1, head_sampler=lambda *a: None, cfg_min_masked=4)


@functools.lru_cache(maxsize=None)
def _randomized():
  """The tiny model with every parameter moved by N(0, 0.2) (the zero-initialised head outputs
  would make guided and unguided draws identical)."""
  graphdef, state = nnx.split(_model())
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  leaves = [v + 0.2 * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)]
  return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))


@functools.lru_cache(maxsize=None)
def _sampler():
  return jax.jit(lambda m, c, n, key, scale: M.sample(m, key, c, n, head_respacing="10",
                                                       steps=3, cfg_scale=scale),
                 static_argnums=4)


@pytest.mark.slow
def test_sample_shapes_guidance_and_scale_one_equals_unguided():
  model = _randomized()
  cond = {k: v for k, v in _cond().items() if k != "aesthetic"}
  null = {"text": jnp.zeros((1, T, TEXT)), "pooled": jnp.zeros((1, TEXT))}
  run = _sampler()
  a = np.asarray(run(model, cond, null, jax.random.key(0), 3.0))
  assert a.shape == (2, K, D) and a.dtype == np.float32 and np.isfinite(a).all()
  np.testing.assert_array_equal(a, np.asarray(run(model, cond, null, jax.random.key(0), 3.0)))
  one = np.asarray(run(model, cond, null, jax.random.key(0), 1.0))
  np.testing.assert_array_equal(one, np.asarray(run(model, cond, None, jax.random.key(0), 1.0)))
  assert np.abs(a - one).max() > 1e-3  # guidance at 3 changes the draw
  assert M.SAMPLING == dict(steps=32, cfg_scale=3.0, cfg_schedule="linear", temperature=1.0,
                            head_respacing="100")


def test_clear_errors():
  model = _model()
  with pytest.raises(ValueError, match=r"unknown maskgen_kl config key\(s\) \['width2'\]"):
    M.make_model(dict(CONFIG, width2=3), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="micro_condition_dim must be even"):
    M.make_model(dict(CONFIG, micro_condition_dim=5), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="scan_layers"):
    M.make_model(dict(CONFIG, scan_layers=True), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"tokens must be \[B, seq_len=6, token_dim=4\], got \(2, 6, 3\)"):
    model.condition(jnp.zeros((2, K, 3)), jnp.zeros((2, K), bool), _cond())
  with pytest.raises(ValueError, match=r"or \[B, K, 8\] posterior moments, got \(2, 6, 5\)"):
    model.latents(jnp.zeros((2, K, 5)), jax.random.key(0))
  with pytest.raises(ValueError, match=r"cond\['text'\] must be \[B=2, T, text_dim=8\]"):
    model.condition(jnp.zeros((2, K, D)), jnp.zeros((2, K), bool), _cond(b=1) | {"pooled": jnp.zeros((2, TEXT))})
  with pytest.raises(ValueError, match=r"unknown MaskGen-KL sampling setting\(s\) \['guidance'\]"):
    M.sample(model, jax.random.key(0), _cond(), guidance=2.0)
  with pytest.raises(ValueError, match="cfg_schedule must be 'linear' or 'constant'"):
    M.sample(model, jax.random.key(0), _cond(), cfg_schedule="cosine")


@pytest.mark.slow
def test_tiny_maskgen_kl_loss_falls_with_captions():
  """The generator trainer's step on fixed latents with two captions' features: 30 AdamW steps on
  one key (the same mask, steps and noise each time), the hybrid loss falls."""
  import optax
  from jaxtok.train import generator, state as state_lib
  cfg = dict(CONFIG, depth=1)
  model = state_lib.model_def(lambda rngs: M.make_model(cfg, rngs=rngs))
  tx = optax.adam(3e-3)
  state = {"step": jnp.zeros((), jnp.int32), "params": model.init(jax.random.key(0))}
  state["opt_state"] = tx.init(state["params"])
  step = jax.jit(generator.make_train_step("maskgen_kl", model, tx))
  rng = np.random.default_rng(0)
  rows = np.arange(8) % 2
  latents = rng.normal(size=(2, K, D)).astype(np.float32)
  labels = _cond(2, null=True)
  batch = {"tokens": jnp.asarray(latents[rows]),
           "label": {k: jnp.asarray(np.asarray(v)[rows]) for k, v in labels.items()}}
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch, jax.random.key(1))
    losses.append(float(metrics["loss"]))
  # Medians: a draw of t = 0 (the decoder NLL term) can spike one step.
  assert np.isfinite(losses).all() and np.median(losses[-5:]) < 0.6 * np.median(losses[:5]), losses


def test_configs_build_and_match_the_released_sizes():
  from jaxtok.configs import maskgen_kl as cfg_lib
  from jaxtok.convert import maskgen_kl as conv
  tiny = cfg_lib.get_config("tiny")
  model = nnx.eval_shape(lambda: M.make_model(tiny.model, rngs=nnx.Rngs(0)))  # builds, no compute
  assert (model.seq_len, model.token_dim) == (tiny.model.seq_len, tiny.model.token_dim)
  for size, name in (("L", "turkeyju/generator_maskgen_kl_l"), ("XL", "turkeyju/generator_maskgen_kl_xl")):
    full = cfg_lib.get_config(f"size={size}").model.to_dict()
    released = conv.RELEASED[name]
    assert {k: full[k] for k in released} == released, size
  with pytest.raises(ValueError, match="'size' must be one of"):
    cfg_lib.get_config("size=B")
