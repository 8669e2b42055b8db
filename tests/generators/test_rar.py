"""RAR (generators.rar): the order mechanics, the KV cache against the full forward pass, sampling
through samplers.autoregressive with the power-cosine guidance, and refused inputs."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.generators import rar
from jaxtok.samplers import autoregressive

K, N, C = 12, 6, 3
TINY = dict(codebook_size=K, seq_len=N, num_classes=C, width=16, depth=2, heads=2)


@functools.lru_cache(maxsize=None)  # tests only read the model
def _model(seed=0, **overrides):
  """A tiny RAR with every parameter perturbed: a fresh one is adaLN-zero (blocks are the identity
  and the head ignores the condition), which would make cache and order tests vacuous."""
  model = rar.make_model(dict(TINY, **overrides), rngs=nnx.Rngs(seed))
  graphdef, state = nnx.split(model)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  leaves = [x + 0.3 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))


def _tokens(b=2, seed=0):
  return jax.random.randint(jax.random.key(seed), (b, N), 0, K, jnp.int32)


def test_random_order_probability_hand_values():
  # anneal 100 -> 200: 1 before and at the start, linear inside, 0 at and after the end.
  for step, want in [(0, 1.0), (99, 1.0), (100, 1.0), (125, 0.75), (150, 0.5), (190, 0.1),
                     (200, 0.0), (201, 0.0), (10_000, 0.0)]:
    assert float(rar.random_order_probability(step, 100, 200)) == pytest.approx(want, abs=1e-6)
  # The released schedule (125k -> 187.5k): 156,250 is the middle.
  assert float(rar.random_order_probability(156_250, 125_000, 187_500)) == pytest.approx(0.5)
  # A traced step works (the train step passes state["step"]).
  got = jax.jit(lambda s: rar.random_order_probability(s, 100, 200))(jnp.int32(175))
  assert float(got) == pytest.approx(0.25)
  # start == end: a switch after that step.
  assert [float(rar.random_order_probability(s, 5, 5)) for s in (4, 5, 6)] == [1.0, 1.0, 0.0]


def test_orders_raster_at_zero_permutations_at_one():
  rng = jax.random.key(3)
  np.testing.assert_array_equal(rar.sample_orders(rng, 5, 7, 0.0), np.tile(np.arange(7), (5, 1)))
  perms = np.asarray(rar.sample_orders(rng, 64, 7, 1.0))
  np.testing.assert_array_equal(np.sort(perms, axis=1), np.tile(np.arange(7), (64, 1)))
  assert (perms != np.arange(7)).any(axis=1).mean() > 0.9


def test_order_is_causal_and_target_aware():
  """Slot j predicts tokens[order[j]] from the tokens earlier in the order only: changing that token
  leaves slots <= j unchanged and changes later ones; the order changes the first prediction only
  through the target-aware embedding."""
  model = _model()
  tokens, labels = _tokens(1), jnp.asarray([1])
  fwd = jax.jit(lambda t, o: model(t, labels, orders=o))
  order = jnp.asarray([[3, 0, 5, 1, 4, 2]])
  base = fwd(tokens, order)
  changed = fwd(tokens.at[0, 5].set((tokens[0, 5] + 1) % K), order)  # the token at order slot 2
  np.testing.assert_allclose(changed[:, :3], base[:, :3], atol=1e-6)
  assert float(jnp.abs(changed[:, 3:] - base[:, 3:]).min()) > 0
  other = fwd(tokens, jnp.asarray([[1, 0, 5, 3, 4, 2]]))
  assert float(jnp.abs(other[:, 0] - base[:, 0]).max()) > 1e-3


def test_kv_cache_equals_full_forward_and_jits():
  for options in ({}, dict(scan_layers=True)):
    model = _model(**options)
    tokens, labels = _tokens(3), jnp.asarray([0, 2, -1])
    full = jax.jit(model)(tokens, labels)

    @jax.jit
    def cached(tokens, labels):
      cache = model.init_cache(3)
      logits, cache = model.prefill(model.condition_ids(labels, 3)[:, None], cache)
      out = [logits]
      for i in range(1, N):
        logits, cache = model.step(tokens[:, i - 1], jnp.int32(i), cache)
        out.append(logits)
      return jnp.stack(out, axis=1)

    np.testing.assert_allclose(cached(tokens, labels), full, atol=1e-5)


def _recompute_fn(model):
  """samplers.autoregressive.sample_recompute's logits_fn from the full forward pass: seq is
  [condition id, tokens...], the condition id mapped back to a label (-1 for the null id)."""
  def logits_fn(seq, length):
    ids = seq[:, 0]
    labels = jnp.where(ids == model.null_id, -1, ids - model.codebook_size - 1)
    logits = model(seq[:, 1:], labels)
    return jax.lax.dynamic_index_in_dim(logits, length - 1, axis=1, keepdims=False)
  return logits_fn


@pytest.mark.parametrize("guided", [False, True])
def test_sampling_with_cache_equals_recompute_and_is_deterministic(guided):
  model = _model()
  labels = jnp.asarray([0, 2])
  prompt = model.condition_ids(labels, 2)[:, None]
  uncond = jnp.full_like(prompt, model.null_id) if guided else None
  opts = dict(num_tokens=N, temperature=1.02, uncond_prompt_tokens=uncond,
              cfg_scale=4.0 if guided else 1.0, cfg_schedule="power-cosine", cfg_power=2.75)

  @jax.jit
  def cached(rng):
    cache = model.init_cache(4 if guided else 2)
    return autoregressive.sample(rng, model.prefill, model.step, cache, prompt, **opts)

  rng = jax.random.key(7)
  a = cached(rng)
  assert a.shape == (2, N) and a.dtype == jnp.int32 and int(a.min()) >= 0 and int(a.max()) < K
  np.testing.assert_array_equal(a, cached(rng))
  np.testing.assert_array_equal(
      a, autoregressive.sample_recompute(rng, _recompute_fn(model), prompt, **opts))
  draws = np.stack([np.asarray(cached(jax.random.key(s))) for s in range(4)])
  assert len({d.tobytes() for d in draws}) > 1
  if guided:  # segments: caches cut to what each segment writes (RAR writes slot position + 1)
    for segment in (2, 4):
      cache = model.init_cache(4)
      for fn in (None, model.prepare_segment):  # prepare_segment: the segment's AdaLN at once
        np.testing.assert_array_equal(a, jax.jit(lambda r, fn=fn: autoregressive.sample(
            r, model.prefill, model.step, cache, prompt, segment=segment, segment_fn=fn,
            **opts))(rng))


def test_prepared_segment_modulations_give_the_step_logits():
  """RAR.prepare_segment(cache, first, stop): a step at a position in [first, stop) reading the
  precomputed AdaLN modulations returns the per-step path's logits and cache."""
  model = _model()
  prompt = model.condition_ids(jnp.asarray([0, 2]), 2)[:, None]
  _, cache = model.prefill(prompt, model.init_cache(2))
  tok = jnp.asarray([3, 5])
  for position, first, stop in ((1, 1, 3), (2, 1, 3), (4, 3, 6)):
    want, want_cache = model.step(tok, position, cache)
    got, got_cache = model.step(tok, position, model.prepare_segment(cache, first, stop))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(got_cache["kv"]), jax.tree.leaves(want_cache["kv"])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_loss_and_gradients():
  model = _model()
  tokens, labels = _tokens(4), jnp.asarray([0, 1, 2, -1])
  value, metrics = jax.jit(lambda t, l: rar.loss(model, t, l, rng=jax.random.key(0), train=False))(
      tokens, labels)
  logp = jax.nn.log_softmax(jax.jit(model)(tokens, labels), -1)
  want = -jnp.mean(jnp.take_along_axis(logp, tokens[..., None], -1))
  assert float(value) == pytest.approx(float(want), rel=1e-6)
  assert float(metrics["random_order_probability"]) == 0.0
  graphdef, state = nnx.split(model)
  grads = jax.jit(jax.grad(lambda s: rar.loss(nnx.merge(graphdef, s), tokens, labels,
                                              rng=jax.random.key(1), train=True,
                                              step=jnp.int32(0))[0]))(state)
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads["target_aware_pos_embed"]["embedding"].get_value()).max()) > 0


def test_bad_inputs_raise():
  model = _model()
  with pytest.raises(ValueError, match=r"tokens must be \[B, seq_len=6\], got \(2, 5\)"):
    model(jnp.zeros((2, 5), jnp.int32))
  with pytest.raises(ValueError, match=r"orders must have the tokens' shape \(2, 6\), got \(2, 5\)"):
    model(_tokens(), orders=jnp.zeros((2, 5), jnp.int32))
  with pytest.raises(ValueError, match=r"orders must be a permutation of 0..5 per sample, got row 1: "
                                       r"\[0, 0, 1, 2, 3, 4\]"):
    model(_tokens(), orders=jnp.asarray([[0, 1, 2, 3, 4, 5], [0, 0, 1, 2, 3, 4]]))
  with pytest.raises(ValueError, match="needs rng"):
    model(_tokens(), jnp.asarray([0, 1]), train=True)
  with pytest.raises(ValueError, match=r"prompt must be the condition ids \[B, 1\], got \(2, 2\)"):
    model.prefill(jnp.zeros((2, 2), jnp.int32), model.init_cache(2))
  with pytest.raises(ValueError, match="needs step"):
    rar.loss(model, _tokens(), None, rng=jax.random.key(0), train=True)
  with pytest.raises(ValueError, match="anneal_start=5, anneal_end=4"):
    rar.make_model(dict(TINY, anneal_start=5, anneal_end=4), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"unknown rar config key\(s\) \['widht'\]"):
    rar.make_model(dict(TINY, widht=8), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="'depth' must be int, got '2'"):
    rar.make_model(dict(TINY, depth="2"), rngs=nnx.Rngs(0))


def test_eval_sampler_runs_rar_with_the_configs_guidance():
  """tools/sample.py's path: `eval.generate` samples RAR through the GPT sampler with the config's
  power-cosine guidance; the same tokens as calling samplers.autoregressive directly."""
  from jaxtok.configs import rar as rar_config
  from jaxtok.eval import generate
  c = rar_config.get_config("size=B")
  opts = generate.options_from_config(c.sampling, cfg_scale=3.0)
  assert (opts.cfg_schedule, opts.cfg_power, opts.temperature) == ("power-cosine", 2.75, 1.0)
  model = _model()
  graphdef, params = nnx.split(model)
  labels = jnp.asarray([1, 2])
  got = generate.make_sampler("rar", graphdef, params, opts)(jax.random.key(5), labels)
  prompt = model.condition_ids(labels, 2)[:, None]
  want = autoregressive.sample(
      jax.random.key(5), model.prefill, model.step, model.init_cache(4), prompt, num_tokens=N,
      uncond_prompt_tokens=jnp.full_like(prompt, model.null_id), cfg_scale=3.0,
      cfg_schedule="power-cosine", cfg_power=2.75)
  np.testing.assert_array_equal(got, want)
  # --segment: the same tokens from the segmented loop; 0 is refused, not read as "unset".
  seg = generate.options_from_config(c.sampling, cfg_scale=3.0, segment=4)
  assert seg.segment == 4
  np.testing.assert_array_equal(
      generate.make_sampler("rar", graphdef, params, seg)(jax.random.key(5), labels), want)
  with pytest.raises(ValueError, match="segment must be an int >= 1"):
    generate.options_from_config(c.sampling, segment=0)
