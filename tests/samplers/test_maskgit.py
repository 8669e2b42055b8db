import functools
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.samplers import maskgit, schedules

# rbg keys: the samplers work with any key implementation, and threefry's unrolled rounds cost
# seconds of XLA compile per random call on a shared 2-core CPU.
KEY = functools.partial(jax.random.key, impl="rbg")

V, K, MASK, STEPS = 5, 12, 5, 4
BIAS = jnp.linspace(12.0, 30.0, K)  # per-position confidence, all distinct


def tie_logits(tokens):
  return jnp.zeros(tokens.shape + (V,))  # constant logits: every confidence ties


def step_logits(tokens):
  """Position p predicts the id (number of masked tokens at this call) mod V with logit BIAS[p]:
  the revealed id records the step, and the most confident (largest BIAS) positions go first."""
  n = jnp.sum(tokens == MASK, -1)
  return jax.nn.one_hot(n % V, V)[:, None, :] * BIAS[None, :, None]


START = jnp.full((3, K), MASK, jnp.int32).at[1, :3].set(jnp.array([2, 0, 4])).at[2, 0].set(1)


@jax.jit
def _ties(rng, ct):
  return {name: maskgit.sample(rng, tie_logits, START, mask_id=MASK, steps=STEPS, schedule=name,
                               choice_temperature=ct) for name in ("cosine", "arccos")}


@jax.jit
def _steps(rng, ct):
  return maskgit.sample(rng, step_logits, START, mask_id=MASK, steps=STEPS, temperature=0.0,
                        choice_temperature=ct)


def test_exact_counts_with_ties_and_no_mask_left():
  unknown = np.asarray(jnp.sum(START == MASK, -1))  # 12, 9, 11
  for ct in (0.0, 4.5):  # 0: every confidence ties exactly
    out = _ties(KEY(0), ct)
    for name in ("cosine", "arccos"):
      table = schedules.mask_count_table(name, K, STEPS)
      tok, counts = map(np.asarray, out[name])
      np.testing.assert_array_equal(counts.T, table[unknown])
      assert not np.any(tok == MASK)
      known = np.asarray(START) != MASK
      np.testing.assert_array_equal(tok[known], np.asarray(START)[known])
  np.testing.assert_array_equal(table[12], [10, 8, 5, 0])  # arccos, hand values in test_schedules
  again = _ties(KEY(0), 4.5)["arccos"][0]
  np.testing.assert_array_equal(again, out["arccos"][0])  # reproducible from rng
  assert not np.array_equal(_ties(KEY(1), 4.5)["arccos"][0], again)


def test_reveals_most_confident_first_and_choice_noise_matters():
  tok = np.asarray(_steps(KEY(1), 0.0)[0])[0]  # sample 0: all 12 masked
  before = np.concatenate([[K], schedules.mask_counts("cosine", K, STEPS)[:-1]])  # 12, 11, 8, 4
  # Ranking by BIAS: the last position is revealed first; step s reveals ids before[s] % V.
  expect = np.empty(K, int)
  order = np.argsort(-np.asarray(BIAS))
  counts = before - schedules.mask_counts("cosine", K, STEPS)
  j = 0
  for s, c in enumerate(counts):
    expect[order[j:j + c]] = before[s] % V
    j += c
  np.testing.assert_array_equal(tok, expect)
  # A huge choice temperature makes the order random (annealed to 0 only at the last step).
  assert not np.array_equal(np.asarray(_steps(KEY(1), 1e4)[0])[0], expect)


def test_guidance_neutral_equals_conditional_and_mask_inside_vocab():
  table = jax.random.normal(KEY(3), (3, K, V + 1)) * 3

  def cond_logits(tokens, cls):  # mask id V - 1 + 1 = 5 is inside this 6-way vocabulary
    return table[cls] + 0.1 * tokens[..., None] + jnp.where(jnp.arange(V + 1) == MASK, 50.0, 0.0)

  cls = jnp.array([0, 1, 0])

  @jax.jit
  def run(rng):
    plain = maskgit.sample(rng, cond_logits, START, mask_id=MASK, steps=STEPS, cond=cls)[0]
    return plain

  @jax.jit
  def run_guided(rng, scale):
    return maskgit.sample(rng, cond_logits, START, mask_id=MASK, steps=STEPS, cond=cls,
                          uncond=jnp.full((3,), 2), cfg_scale=scale, cfg_schedule="linear")[0]

  plain = np.asarray(run(KEY(4)))
  neutral = np.asarray(run_guided(KEY(4), 1.0))
  guided = np.asarray(run_guided(KEY(4), 4.0))
  np.testing.assert_array_equal(neutral, plain)
  assert not np.array_equal(guided, plain)
  assert not np.any(plain == MASK) and not np.any(guided == MASK)  # mask logit 50 is forbidden


def test_errors():
  run = lambda tokens=START, **kw: maskgit.sample(KEY(0), tie_logits, tokens,
                                                  **{"mask_id": MASK, "steps": 2, **kw})
  with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
    run(steps=0)
  with pytest.raises(ValueError, match="steps must be <= the number of tokens K=12, got 13"):
    run(steps=13)
  with pytest.raises(ValueError, match=r"mask_id must be an int in \[0, 5\].*got -1"):
    run(mask_id=-1)
  with pytest.raises(ValueError, match=r"mask_id must be an int in \[0, 5\].*got 6"):
    run(mask_id=6)
  with pytest.raises(ValueError, match=r"tokens must be ids in \[0, 5\) or equal mask_id=5, got 7"):
    run(tokens=START.at[0, 3].set(7))
  with pytest.raises(ValueError, match="choice_temperature must be >= 0"):
    run(choice_temperature=-1.0)
  with pytest.raises(ValueError, match=r"top_k must be an int in \[1, 5\]"):
    run(top_k=6)
