import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.samplers import masked_diffusion as md

# rbg keys: the samplers work with any key implementation, and threefry's unrolled rounds cost
# seconds of XLA compile per random call on a shared 2-core CPU.
KEY = functools.partial(jax.random.key, impl="rbg")

S, MASK = 3, 3  # 3 positions over symbols {0, 1, 2}; the mask id 3 lies inside the 4-way output
# A joint with strong dependence: x2 = x0 + x1 mod 3 with probability 0.85, x0, x1 skewed.
P = np.zeros((S, S, S))
for a, b, c in itertools.product(range(S), repeat=3):
  P[a, b, c] = [0.5, 0.3, 0.2][a] * [0.2, 0.2, 0.6][b] * (0.85 if c == (a + b) % 3 else 0.075)
P /= P.sum()
PJ = jnp.asarray(P, jnp.float32)


def exact_logits(tokens):
  """The true conditionals p(x_i | revealed tokens) of P at every position: [B, 3, 4] (the mask
  column gets logit 0, a plausible value the samplers must ignore)."""
  m = [jnp.where((tokens[:, i] == MASK)[:, None], 1.0, jax.nn.one_hot(tokens[:, i], S)) for i in range(3)]
  w = jnp.einsum("abc,na,nb,nc->nabc", PJ, *m)
  marg = jnp.stack([w.sum((2, 3)), w.sum((1, 3)), w.sum((1, 2))], 1)
  return jnp.concatenate([jnp.log(marg), jnp.zeros(marg.shape[:2] + (1,))], -1)


def _tv(tokens, target):
  idx = np.asarray(tokens) @ np.array([9, 3, 1])
  freq = np.bincount(idx, minlength=27) / len(idx)
  return 0.5 * np.abs(freq - target.reshape(-1)).sum()


N = 20_000
ALL = jnp.full((N, 3), MASK, jnp.int32)


def _conditional(i, v, known):
  """p(x_i = v | known positions) under P."""
  ok = lambda x: all(x[j] == known[j] for j in known)
  xs = [x for x in itertools.product(range(S), repeat=3) if ok(x)]
  return sum(P[x] for x in xs if x[i] == v) / sum(P[x] for x in xs)


def ancestral_exact(steps):
  """The exact output distribution of the linear-schedule ancestral sampler with `steps` steps:
  each position's reveal step is uniform over the steps; positions revealed together are drawn
  independently given those revealed before."""
  patterns = {}
  for st in itertools.product(range(steps), repeat=3):
    key = tuple(tuple(i for i in range(3) if st[i] == u) for u in sorted(set(st)))
    patterns[key] = patterns.get(key, 0) + 1 / steps ** 3
  out = np.zeros((S, S, S))
  for groups, w in patterns.items():
    for x in itertools.product(range(S), repeat=3):
      prob, known = w, {}
      for g in groups:
        for i in g:
          prob *= _conditional(i, x[i], known)
        known.update({i: x[i] for i in g})
      out[x] += prob
  return out


@functools.partial(jax.jit, static_argnames=("steps",))
def _anc(rng, steps):
  return md.ancestral(rng, exact_logits, ALL, mask_id=MASK, steps=steps)


def test_first_hitting_and_ancestral_match_exact_distributions():
  """TV between 20k samples and the exact distribution. Sampling noise gives TV ~ 0.01; drawing
  all positions at once independently (the product of marginals) is 0.36 away from P, so a
  sampler that reveals tokens together without conditioning fails the 0.03 bound."""
  product = ancestral_exact(1)
  marg = P.sum((1, 2))[:, None, None] * P.sum((0, 2))[None, :, None] * P.sum((0, 1))[None, None, :]
  np.testing.assert_allclose(product, marg, atol=1e-12)  # one step = independent draws
  assert 0.5 * np.abs(product - P).sum() > 0.3
  fhs, times = jax.jit(lambda r: md.first_hitting(r, exact_logits, ALL, mask_id=MASK))(KEY(0))
  assert _tv(fhs, P) < 0.03  # first-hitting is exact
  # ancestral with 16 steps: exact for its own (slightly parallel) distribution, which is
  # already close to P (1/16 of the mass of a pair shares a step)
  exact16 = ancestral_exact(16)
  assert 0.5 * np.abs(exact16 - P).sum() < 0.05
  assert _tv(_anc(KEY(1), 16), exact16) < 0.03
  assert _tv(_anc(KEY(1), 1), P) > 0.25  # one step: independent draws, far off
  # hitting times: 1 > t_first > t_second > t_third > 0 per sample
  t = np.sort(np.asarray(times), axis=1)
  assert np.all(t > 0) and np.all(t < 1) and np.all(np.diff(t, axis=1) > 0)


def test_first_hitting_conditions_on_given_tokens():
  start = ALL.at[:, 2].set(1)  # condition on x2 = 1
  out = jax.jit(lambda r: md.first_hitting(r, exact_logits, start, mask_id=MASK))(KEY(2))[0]
  out = np.asarray(out)
  assert np.all(out[:, 2] == 1)
  cond = P[:, :, 1] / P[:, :, 1].sum()
  freq = np.bincount(out[:, 0] * 3 + out[:, 1], minlength=9) / N
  assert 0.5 * np.abs(freq - cond.reshape(-1)).sum() < 0.02


def test_guidance_neutral_time_conditioning_and_reproducible():
  def logits_fn(tokens, t, cls):
    return exact_logits(tokens) + 0.5 * cls[:, None, None] * jnp.arange(4.0) + t[:, None, None]

  start = ALL[:64]
  cls = jnp.ones((64,))

  @jax.jit
  def run(rng, scale):
    kw = dict(mask_id=MASK, cond=cls, time_conditioned=True)
    plain = md.first_hitting(rng, logits_fn, start, **kw)[0]
    guided = md.first_hitting(rng, logits_fn, start, uncond=jnp.zeros((64,)), cfg_scale=scale, **kw)[0]
    anc = md.ancestral(rng, logits_fn, start, steps=8, schedule="cosine", uncond=jnp.zeros((64,)),
                       cfg_scale=scale, **kw)
    return plain, guided, anc

  plain, neutral, anc = run(KEY(3), 1.0)
  np.testing.assert_array_equal(plain, neutral)
  assert not np.any(np.asarray(anc) == MASK) and not np.any(np.asarray(plain) == MASK)
  np.testing.assert_array_equal(run(KEY(3), 1.0)[2], anc)
  assert not np.array_equal(run(KEY(4), 1.0)[0], plain)


def test_unmask_probabilities_hand_values():
  # linear, 4 steps: masked fraction 1, .75, .5, .25, 0 -> 1/4, 1/3, 1/2, 1
  np.testing.assert_allclose(md.unmask_probabilities("linear", 4), [0.25, 1 / 3, 0.5, 1.0], rtol=1e-6)


def test_errors():
  for kw, msg in [(dict(mask_id=-1), r"mask_id must be an int in \[0, 4\].*got -1"),
                  (dict(mask_id=5), r"mask_id must be an int in \[0, 4\].*got 5"),
                  (dict(mask_id=MASK, top_p=2.0), r"top_p must be in \(0, 1\]"),
                  (dict(mask_id=MASK, temperature=-1.0), "temperature must be >= 0")]:
    with pytest.raises(ValueError, match=msg):
      md.first_hitting(KEY(0), exact_logits, ALL[:2], **kw)
  with pytest.raises(ValueError, match=r"tokens must be ids in \[0, 4\) or equal mask_id=3, got 9"):
    md.first_hitting(KEY(0), exact_logits, ALL[:2].at[0, 0].set(9), mask_id=MASK)
  with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
    md.ancestral(KEY(0), exact_logits, ALL[:2], mask_id=MASK, steps=0)
