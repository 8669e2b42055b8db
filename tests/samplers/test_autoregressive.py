import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.generators import gpt
from jaxtok.samplers import autoregressive as ar

# rbg keys: the samplers work with any key implementation, and threefry's unrolled rounds cost
# seconds of XLA compile per random call on a shared 2-core CPU.
KEY = functools.partial(jax.random.key, impl="rbg")

V, N = 7, 6
NULL = 2  # condition ids 0, 1; 2 = null
TABLE = jax.random.normal(KEY(1), (V, V)) * 2
COND = jax.random.normal(KEY(2), (3, V)) * 2
POS = jax.random.normal(KEY(3), (N + 3, V))

# Toy model: logits for sequence index L = TABLE[token L-1] + COND[condition] + POS[L]. The prompt
# is [condition, start token]; the "cache" carries the condition id of each row.


def prefill(tokens, cache):
  p = tokens.shape[1]
  return TABLE[tokens[:, -1]] + COND[tokens[:, 0]] + POS[p], tokens[:, 0]


def step(tok, pos, cache):
  return TABLE[tok] + COND[cache] + POS[pos + 1], cache


def logits_fn(seq, length):
  prev = jax.lax.dynamic_index_in_dim(seq, length - 1, 1, keepdims=False)
  return TABLE[prev] + COND[seq[:, 0]] + POS[length]


PROMPT = jnp.array([[0, 1], [1, 3], [0, 5]], jnp.int32)
UNCOND = PROMPT.at[:, 0].set(NULL)


@functools.partial(jax.jit, static_argnames=("kw",))
def _both(rng, kw):
  kw = dict(kw)
  guided = kw.get("uncond_prompt_tokens") is not None
  if guided:
    kw["uncond_prompt_tokens"] = UNCOND
  b2 = PROMPT.shape[0] * (2 if guided else 1)
  a = ar.sample(rng, prefill, step, jnp.zeros((b2,), jnp.int32), PROMPT, num_tokens=N, **kw)
  b = ar.sample_recompute(rng, logits_fn, PROMPT, num_tokens=N, **kw)
  return a, b


CONFIGS = [
    (),
    (("temperature", 0.7), ("top_k", 3), ("top_p", 0.8)),
    (("uncond_prompt_tokens", True), ("cfg_scale", 3.0), ("cfg_schedule", "power-cosine"),
     ("cfg_power", 2.0), ("top_p", 0.9)),
    (("uncond_prompt_tokens", True), ("cfg_scale", 2.0), ("cfg_schedule", "linear")),
]


@pytest.mark.parametrize("kw", CONFIGS)
def test_cached_equals_recompute(kw):
  a, b = _both(KEY(0), kw)
  np.testing.assert_array_equal(a, b)
  assert a.shape == (3, N) and a.dtype == jnp.int32
  assert np.all((np.asarray(a) >= 0) & (np.asarray(a) < V))
  a2, _ = _both(KEY(0), kw)  # reproducible from rng
  np.testing.assert_array_equal(a, a2)
  a3, _ = _both(KEY(1), kw)
  assert not np.array_equal(a, a3)


def test_greedy_follows_argmax_chain():
  g = jax.jit(lambda r: ar.sample(r, prefill, step, jnp.zeros((3,), jnp.int32), PROMPT,
                                  num_tokens=4, temperature=0.0))(KEY(5))
  t, c, pos = np.asarray(TABLE), np.asarray(COND), np.asarray(POS)
  prev = np.asarray(PROMPT[:, -1])
  for i in range(4):
    prev = (t[prev] + c[np.asarray(PROMPT[:, 0])] + pos[2 + i]).argmax(-1)
    np.testing.assert_array_equal(g[:, i], prev)


def test_top_k_one_is_greedy_and_top_p_tiny_is_greedy():
  f = jax.jit(lambda r, **kw: ar.sample(r, prefill, step, jnp.zeros((3,), jnp.int32), PROMPT,
                                        num_tokens=N, **kw), static_argnames=("top_k", "top_p", "temperature"))
  greedy = f(KEY(0), temperature=0.0)
  np.testing.assert_array_equal(f(KEY(3), top_k=1), greedy)
  np.testing.assert_array_equal(f(KEY(4), top_p=1e-6), greedy)


def test_neutral_guidance_equals_conditional():
  @jax.jit
  def run(rng):
    plain = ar.sample(rng, prefill, step, jnp.zeros((3,), jnp.int32), PROMPT, num_tokens=N)
    neutral = ar.sample(rng, prefill, step, jnp.zeros((6,), jnp.int32), PROMPT, num_tokens=N,
                        uncond_prompt_tokens=UNCOND, cfg_scale=1.0)
    strong = ar.sample(rng, prefill, step, jnp.zeros((6,), jnp.int32), PROMPT, num_tokens=N,
                       uncond_prompt_tokens=UNCOND, cfg_scale=1.0, cfg_schedule="power-cosine")
    return plain, neutral, strong
  plain, neutral, pc = run(KEY(7))
  np.testing.assert_array_equal(plain, neutral)
  np.testing.assert_array_equal(plain, pc)  # power-cosine of g = 1 is 1 at every step


def test_variable_lengths_are_prefixes_of_full_samples():
  lengths = jnp.array([2, 6, 4], jnp.int32)

  @jax.jit
  def run(rng, lengths):
    full = ar.sample(rng, prefill, step, jnp.zeros((3,), jnp.int32), PROMPT, num_tokens=N)
    short = ar.sample(rng, prefill, step, jnp.zeros((3,), jnp.int32), PROMPT, num_tokens=N,
                      lengths=lengths, pad_id=-1)
    ref = ar.sample_recompute(rng, logits_fn, PROMPT, num_tokens=N, lengths=lengths, pad_id=-1)
    return full, short, ref
  full, short, ref = map(np.asarray, run(KEY(2), lengths))
  keep = np.asarray(ar.length_mask(lengths, N))
  np.testing.assert_array_equal(keep.sum(1), lengths)
  np.testing.assert_array_equal(short[keep], full[keep])
  assert np.all(short[~keep] == -1)
  np.testing.assert_array_equal(short, ref)


def test_errors():
  cache = jnp.zeros((3,), jnp.int32)
  run = lambda **kw: ar.sample(KEY(0), prefill, step, cache, PROMPT, **kw)
  with pytest.raises(ValueError, match="num_tokens must be an int >= 1, got 0"):
    run(num_tokens=0)
  with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 0.0"):
    run(num_tokens=2, top_p=0.0)
  with pytest.raises(ValueError, match=r"top_k must be an int in \[1, 7\].*got 8"):
    run(num_tokens=2, top_k=8)
  with pytest.raises(ValueError, match="temperature must be >= 0"):
    run(num_tokens=2, temperature=-0.5)
  with pytest.raises(ValueError, match=r"lengths must be in \[1, num_tokens=2\], got min 0, max 3"):
    run(num_tokens=2, lengths=jnp.array([0, 1, 3]))
  with pytest.raises(ValueError, match="uncond_prompt_tokens must have the prompt's shape"):
    run(num_tokens=2, uncond_prompt_tokens=UNCOND[:2])
  with pytest.raises(ValueError, match="cfg_schedule must be one of"):
    run(num_tokens=2, cfg_schedule="cosine")


@pytest.mark.parametrize("segment", [1, 2, 4, 5, 9])
def test_segments_grow_the_kv_caches_and_draw_the_same_tokens(segment):
  """segment=s: before steps i in [s0, s0 + s) every KVCache in the cache (S slots) is resized to
  S - (N - min(s0 + s, N)) slots, here the length the segment's writes need (a step that wrote past it
  would be clamped by XLA: the toy step returns NaN logits then), keeping what earlier steps wrote
  (the toy's logits read the sum of all written slots) and leaving other leaves alone; the tokens
  equal the unsegmented loop's, with guidance and variable lengths."""
  from jaxtok.nn.attention import KVCache
  seen = []

  def kv_prefill(tokens, cache):
    kv, cond = cache
    k = jax.lax.dynamic_update_slice_in_dim(kv.k, tokens[:, None, :, None].astype(jnp.float32), 0, 2)
    logits, _ = prefill(tokens, None)
    return logits + 0.1 * jnp.sum(k, (1, 2, 3))[:, None], (KVCache(k, kv.v), tokens[:, 0])

  def kv_step(tok, pos, cache):
    kv, cond = cache
    seen.append(kv.k.shape[2])
    k = jax.lax.dynamic_update_slice_in_dim(kv.k, tok[:, None, None, None].astype(jnp.float32),
                                            pos, 2)
    logits, cond = step(tok, pos, cond)
    logits = logits + 0.1 * jnp.sum(k, (1, 2, 3))[:, None]
    return jnp.where(pos < kv.k.shape[2], logits, jnp.nan), (KVCache(k, kv.v), cond)

  lengths = jnp.array([N, 3, 5])
  kw = dict(num_tokens=N, uncond_prompt_tokens=UNCOND, cfg_scale=2.0, lengths=lengths)
  p = PROMPT.shape[1]
  cache = (KVCache(jnp.zeros((6, 1, p + N - 1, 1)), jnp.zeros((6, 1, p + N - 1, 1))),
           jnp.zeros((6,), jnp.int32))
  want = ar.sample(KEY(4), kv_prefill, kv_step, cache, PROMPT, **kw)
  seen.clear()
  got = jax.jit(lambda r: ar.sample(r, kv_prefill, kv_step, cache, PROMPT, segment=segment,
                                    **kw))(KEY(4))
  np.testing.assert_array_equal(got, want)
  assert seen == [p + min(s0 + segment, N) - 1 for s0 in range(1, N, segment)]
  for bad in (0, -1, True, 2.0):
    with pytest.raises((ValueError, TypeError), match="segment"):
      ar.sample(KEY(4), kv_prefill, kv_step, cache, PROMPT, segment=bad, **kw)
  # segment_fn(cache, first, stop) runs before each segment with its steps' positions.
  calls = []
  ar.sample(KEY(4), kv_prefill, kv_step, cache, PROMPT, segment=segment,
            segment_fn=lambda c, first, stop: calls.append((first, stop)) or c, **kw)
  assert calls == [(p + s0 - 1, p + min(s0 + segment, N) - 1) for s0 in range(1, N, segment)]
  with pytest.raises(ValueError, match="segment_fn needs segment"):
    ar.sample(KEY(4), kv_prefill, kv_step, cache, PROMPT, segment_fn=lambda c, a, b: c, **kw)


@pytest.mark.slow
def test_drives_gpt_kv_cache_with_guidance_and_top_p():
  """The real GPT's prefill/step through the cached sampler equals recomputing the full sequence."""
  model = gpt.GPT(codebook_size=11, seq_len=5, num_classes=3, width=16, depth=1, heads=2,
                  rngs=nnx.Rngs(KEY(0)))
  graphdef, state = nnx.split(model)
  labels = jnp.array([0, 2])
  prompt = model.condition_ids(labels, 2)[:, None]
  uncond = jnp.full_like(prompt, model.null_id)
  kw = dict(num_tokens=5, top_p=0.9, temperature=1.3, uncond_prompt_tokens=uncond, cfg_scale=2.5,
            cfg_schedule="power-cosine", cfg_power=1.5)

  @jax.jit
  def run(state, rng):
    m = nnx.merge(graphdef, state)
    cached = ar.sample(rng, m.prefill, m.step, m.init_cache(4), prompt, **kw)
    segmented = ar.sample(rng, m.prefill, m.step, m.init_cache(4), prompt, segment=2, **kw)
    recompute = ar.sample_recompute(
        rng, lambda seq, n: jnp.take(m.net(seq), n - 1, axis=1), prompt, **kw)
    return cached, segmented, recompute

  cached, segmented, recompute = run(state, KEY(3))
  np.testing.assert_array_equal(cached, recompute)
  np.testing.assert_array_equal(segmented, recompute)
  assert np.all((np.asarray(cached) >= 0) & (np.asarray(cached) < 11))


def test_token_groups_fill_n_by_g_and_pad_by_length():
  """Logits [B', G, V] per step: out [B, N, G]; a group is drawn at once (greedy here: sub-position
  g of step i gets token (i + g) % V), fed back whole, and steps >= lengths[b] hold pad_id."""
  vocab, g, n = 7, 3, 5
  fed = []

  def logits_for(i, rows):
    return jnp.broadcast_to(jax.nn.one_hot((i + jnp.arange(g)) % vocab, vocab) * 30.0, (rows, g, vocab))

  def prefill(prompt, cache):
    return logits_for(0, prompt.shape[0]), cache

  def step(group, position, cache):
    jax.debug.callback(lambda t: fed.append(np.asarray(t).copy()), group)
    return logits_for(position, group.shape[0]), cache  # position p (prompt length 1) -> step p

  out = ar.sample(jax.random.key(0), prefill, step, (), jnp.zeros((2, 1), jnp.int32),
                  num_tokens=n, temperature=0.0, lengths=jnp.array([5, 2]), pad_id=-1)
  want = (np.arange(n)[:, None] + np.arange(g)[None, :]) % vocab
  assert out.shape == (2, n, g)
  np.testing.assert_array_equal(out[0], want)
  np.testing.assert_array_equal(out[1, :2], want[:2])
  assert (np.asarray(out[1, 2:]) == -1).all()
  np.testing.assert_array_equal(fed[0], np.broadcast_to(want[0], (2, g)))


def test_teacher_forcing_keeps_ground_truth_and_conditions_on_the_mixed_prefix():
  """forced=(gt, keep): kept positions hold gt; the others are the draws of the toy chain from the
  *mixed* previous token (greedy, so each is argmax of TABLE[prev] + COND + POS by hand); the cached
  and recomputing samplers agree; all-False keep equals the unforced sample for the same key."""
  gt = jnp.array([[4, 4, 4, 4, 4, 4], [0, 1, 2, 3, 4, 5], [6, 6, 6, 6, 6, 6]], jnp.int32)
  keep = jnp.array([[1, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  cache = jnp.zeros((3,), jnp.int32)
  got = ar.sample(KEY(5), prefill, step, cache, PROMPT, num_tokens=N, temperature=0.0,
                  forced=(gt, keep))
  ref = ar.sample_recompute(KEY(5), logits_fn, PROMPT, num_tokens=N, temperature=0.0, forced=(gt, keep))
  np.testing.assert_array_equal(got, ref)
  table, cond, pos = np.asarray(TABLE), np.asarray(COND), np.asarray(POS)
  for b in range(3):
    prev = int(PROMPT[b, 1])
    for i in range(N):
      want = int(gt[b, i]) if keep[b, i] else int(np.argmax(table[prev] + cond[PROMPT[b, 0]] + pos[2 + i]))
      assert int(got[b, i]) == want, (b, i)
      prev = want
  # Sampling noise of an unkept position is that of the unforced run: with nothing kept, same tokens.
  free = ar.sample(KEY(6), prefill, step, cache, PROMPT, num_tokens=N, temperature=1.0)
  none = ar.sample(KEY(6), prefill, step, cache, PROMPT, num_tokens=N, temperature=1.0,
                   forced=(gt, jnp.zeros_like(keep)))
  np.testing.assert_array_equal(free, none)
  with pytest.raises(ValueError, match=r"forced keep must have shape \(3, 6\)"):
    ar.sample(KEY(6), prefill, step, cache, PROMPT, num_tokens=N, forced=(gt, keep[:, :2]))
  with pytest.raises(TypeError, match="forced keep must be bool"):
    ar.sample(KEY(6), prefill, step, cache, PROMPT, num_tokens=N, forced=(gt, keep.astype(jnp.int32)))
