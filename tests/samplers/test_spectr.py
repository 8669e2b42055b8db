import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.generators import gpt
from jaxtok.samplers import autoregressive as ar
from jaxtok.samplers import spectr

KEY = functools.partial(jax.random.key, impl="rbg")  # see tests/samplers/test_masked_diffusion.py

V, T = 3, 3  # 3 generated positions over symbols {0, 1, 2}: 27 outcomes
N_SAMPLES = 20_000
TV_BOUND = float(np.sqrt(V ** T / N_SAMPLES))  # ~0.037; the sampling noise alone is ~0.015


def _joint(seed, power):
  rs = np.random.RandomState(seed)
  p = rs.dirichlet(np.ones(V ** T) * 0.6) ** power
  return (p / p.sum()).reshape((V,) * T)


PT = _joint(0, 1.0)  # target joint
PD = _joint(1, 0.5)  # draft joint: a different one


def _tv(tokens, joint):
  idx = np.asarray(tokens) @ (V ** np.arange(T)[::-1])
  freq = np.bincount(idx, minlength=V ** T) / len(idx)
  return 0.5 * np.abs(freq - joint.reshape(-1)).sum()


def table_extend(joint):
  """An exact "model" of a joint over T tokens with the extend contract: the cache is the token
  buffer [R, S] (slot 0 the prompt, t_i at slot i + 1); logits at slot s are the log conditionals of
  t_s given t_0..t_{s-1} (uniform past T)."""
  tables = [jnp.asarray(joint.sum(tuple(range(i + 1, T))), jnp.float32) for i in range(T)]

  def one(buf, s):
    out = jnp.zeros((V,))
    for i, tab in enumerate(tables):
      row = tab[tuple(buf[1:i + 1])] if i else tab
      out = jnp.where(s == i, jnp.log(row + 1e-30), out)
    return out

  def extend(ids, start, buf):
    buf = jax.lax.dynamic_update_slice_in_dim(buf, ids, start, axis=1)
    slots = start + jnp.arange(ids.shape[1])
    logits = jax.vmap(lambda s: jax.vmap(one, (0, None))(buf, s), out_axes=1)(slots)
    return logits, buf
  return extend


def const_extend(logits_row):
  """A draft that always proposes from one fixed distribution."""
  def extend(ids, start, buf):
    return jnp.broadcast_to(jnp.asarray(logits_row, jnp.float32), ids.shape + (V,)), buf
  return extend


def _buf(k, L):
  return jnp.zeros((k, 1 + T + L), jnp.int32)


PROMPT = jnp.zeros((N_SAMPLES, 1), jnp.int32)


K, L = 3, 2


@jax.jit
def _run_tables(rng, same):
  """SpecTr with K drafts of L tokens from PD (or, with `same`, from PT itself): one compile."""
  k = K
  draft = table_extend(jnp.where(same, jnp.asarray(PT, jnp.float32), jnp.asarray(PD, jnp.float32)))
  return spectr.sample(rng, table_extend(PT), _buf(k, L), draft, _buf(k, L), PROMPT,
                       num_tokens=T, num_drafts=k, draft_len=L)


_RULE = jax.jit(spectr.kseq_rule)  # k traced: one compile


def _output_distribution(p, q, k):
  """The exact output distribution of K-SEQ with k candidates, by enumerating the V^k draft tuples
  (sequential acceptance, then the residual)."""
  accept, residual = _RULE(p, q, k)
  accept, residual = np.asarray(accept, np.float64), np.asarray(residual, np.float64)
  out = np.zeros(len(p))
  for xs in itertools.product(range(len(p)), repeat=k):
    w, left = np.prod([p[x] for x in xs]), 1.0
    for x in xs:
      out[x] += w * left * accept[x]
      left *= 1 - accept[x]
    out += w * left * residual
  return out, accept


def test_kseq_output_is_exactly_the_target_and_k1_is_speculative_sampling():
  rs = np.random.RandomState(0)
  for trial in range(6):
    p, q = rs.dirichlet(np.ones(5) * 0.5), rs.dirichlet(np.ones(5) * 0.5)
    if trial % 2:  # zeros in either support
      p[0], q[1] = 0.0, 0.0
      p, q = p / p.sum(), q / q.sum()
    p, q = p.astype(np.float32), q.astype(np.float32)
    acc_rates = []
    for k in (1, 2, 4):
      out, accept = _output_distribution(p, q, k)
      np.testing.assert_allclose(out, q, atol=2e-6)
      acc_rates.append(1 - sum(  # chance that some candidate is kept
          np.prod([p[x] for x in xs]) * np.prod([1 - accept[x] for x in xs])
          for xs in itertools.product(range(5), repeat=k)))
      if k == 1:  # standard speculative sampling: min(1, q/p), residual (q - p)_+
        np.testing.assert_allclose(accept, np.where(p > 0, np.minimum(1, q / np.maximum(p, 1e-30)), 0),
                                   rtol=1e-6)
        res = np.maximum(q - p, 0)
        np.testing.assert_allclose(_RULE(p, q, 1)[1], res / res.sum(), atol=1e-6)
        np.testing.assert_allclose(acc_rates[0], np.minimum(p, q).sum(), atol=1e-6)
    assert acc_rates[0] <= acc_rates[1] + 1e-6 <= acc_rates[2] + 2e-6  # more drafts, more kept


def test_kseq_disjoint_draft_always_draws_the_target():
  p = np.array([0.0, 0.0, 1.0], np.float32)
  q = np.array([0.3, 0.7, 0.0], np.float32)
  for k in (1, 3):
    accept, residual = _RULE(p, q, k)
    np.testing.assert_allclose(accept, 0.0)
    np.testing.assert_allclose(residual, q, atol=1e-7)


def test_spectr_matches_exact_target_joint():
  """k = 3 drafts of L = 2 tokens; k = 1 is the standard rule, exact by the analytic test above."""
  assert 0.5 * np.abs(PD - PT).sum() > 0.2  # sampling the draft itself would fail the bound
  tokens, stats = _run_tables(KEY(1), False)
  assert _tv(tokens, PT) < TV_BOUND
  s = {n: np.asarray(x) for n, x in stats.items()}
  assert np.all(s["target_calls"] == 1 + s["blocks"]) and np.all(s["target_calls"] <= T)
  assert np.all(s["draft_calls"] == 1 + L * s["blocks"]) and np.all(s["drafted"] == L * s["blocks"])
  assert 0 < s["accepted"].sum() < s["drafted"].sum()


def test_spectr_with_the_target_as_draft_accepts_everything():
  tokens, stats = _run_tables(KEY(5), True)
  assert _tv(tokens, PT) < TV_BOUND
  # one prefill draw, then one block of L = 2 accepted tokens (N = 3): 2 target calls per sample
  np.testing.assert_array_equal(stats["target_calls"], 2)
  np.testing.assert_array_equal(stats["accepted"], stats["drafted"])


def test_always_rejected_draft_gives_the_plain_sampler_tokens():
  ok = np.array([1.0, 1.0, 0.0])
  pt0 = PT * ok[:, None, None] * ok[None, :, None] * ok[None, None, :]  # the target never emits 2
  target = table_extend(pt0 / pt0.sum())
  draft = const_extend([-jnp.inf, -jnp.inf, 0.0])  # the draft only proposes 2
  prompt = PROMPT[:256]

  @jax.jit
  def run(rng):
    toks, stats = spectr.sample(rng, target, _buf(2, 2), draft, _buf(2, 2), prompt, num_tokens=T,
                                num_drafts=2, draft_len=2)
    prefill = lambda ids, buf: (lambda lg, b: (lg[:, -1], b))(*target(ids, 0, buf))
    step = lambda tok, pos, buf: (lambda lg, b: (lg[:, 0], b))(*target(tok[:, None], pos, buf))
    plain = jax.vmap(lambda b, pr: ar.sample(jax.random.fold_in(rng, b), prefill, step,
                                             jnp.zeros((1, 1 + T), jnp.int32), pr[None],
                                             num_tokens=T)[0])(jnp.arange(len(prompt)), prompt)
    return toks, stats, plain

  toks, stats, plain = run(KEY(7))
  np.testing.assert_array_equal(toks, plain)
  assert not np.any(np.asarray(toks) == 2)
  np.testing.assert_array_equal(stats["accepted"], 0)
  # every block keeps one residual token: N - 1 blocks after the prefill draw
  np.testing.assert_array_equal(stats["target_calls"], T)


def _peaky_gpt(seed):
  m = gpt.GPT(codebook_size=V, seq_len=T, num_classes=0, width=16, depth=1, heads=2,
              class_dropout=0.0, rngs=nnx.Rngs(seed))
  m.net.head.kernel[...] = m.net.head.kernel[...] * 60.0  # far from uniform
  return m


@pytest.mark.slow
def test_spectr_over_gpt_kv_caches_matches_the_enumerated_target():
  target, draft = _peaky_gpt(0), _peaky_gpt(1)
  seqs = jnp.asarray(list(itertools.product(range(V), repeat=T)), jnp.int32)
  logp = jax.nn.log_softmax(target(seqs), -1)
  joint = np.exp(np.asarray(jnp.take_along_axis(logp, seqs[..., None], -1)[..., 0].sum(-1), np.float64))
  joint = (joint / joint.sum()).reshape((V,) * T)
  k, L = 2, 2

  @jax.jit
  def run(rng):
    return spectr.sample(rng, target.net.extend, target.net.init_cache(k, 1 + T + L),
                         draft.net.extend, draft.net.init_cache(k, 1 + T + L),
                         jnp.full((N_SAMPLES, 1), target.null_id, jnp.int32), num_tokens=T,
                         num_drafts=k, draft_len=L)

  tokens, stats = run(KEY(11))
  assert _tv(tokens, joint) < TV_BOUND
  assert 0 < np.asarray(stats["accepted"]).sum() < np.asarray(stats["drafted"]).sum()


def test_errors():
  ext = table_extend(PT)
  kw = dict(num_tokens=T, num_drafts=2, draft_len=2)
  with pytest.raises(ValueError, match="num_drafts must be an int >= 1, got 0"):
    spectr.sample(KEY(0), ext, _buf(2, 2), ext, _buf(2, 2), PROMPT[:2], **{**kw, "num_drafts": 0})
  with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
    spectr.sample(KEY(0), ext, _buf(2, 2), ext, _buf(2, 2), PROMPT[:2], temperature=0.0, **kw)
  with pytest.raises(ValueError, match=r"prompt_tokens must be \[B, P\] with P >= 1, got shape \(2,\)"):
    spectr.sample(KEY(0), ext, _buf(2, 2), ext, _buf(2, 2), PROMPT[:2, 0], **kw)
