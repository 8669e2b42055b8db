import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.samplers import mar, schedules

# rbg keys: the samplers work with any key implementation, and threefry's unrolled rounds cost
# seconds of XLA compile per random call on a shared 2-core CPU.
KEY = functools.partial(jax.random.key, impl="rbg")

B, N, STEPS = 3, 10, 4
HEAD = schedules.disa_steps("linear", STEPS, 7, 2)  # 7, 5, 3, 2 head steps


def condition_fn(tokens, mask, labels):
  """z[..., 0] = number of known tokens + 10 * label (the same at every position)."""
  known = jnp.sum(~mask, -1).astype(jnp.float32) + 10.0 * labels
  return jnp.broadcast_to(known[:, None, None], mask.shape + (1,))


def head_fn(x, t, z):
  """Velocity (z, 2t): from x = 0 Euler ends at (z, 1 - 1/n) after n steps (hand-derived)."""
  return jnp.concatenate([z[:, :1], jnp.full((x.shape[0], 1), 2.0 * t)], -1)


@functools.partial(jax.jit, static_argnames=("cfg_schedule",))
def _run(rng, temperature, scale, cfg_schedule="linear"):
  kw = dict(batch=B, num_tokens=N, token_dim=2, steps=STEPS, head_steps=HEAD,
            temperature=temperature, cond=jnp.ones((B,)))
  return (mar.sample(rng, condition_fn, head_fn, **kw),
          mar.sample(rng, condition_fn, head_fn, uncond=jnp.zeros((B,)), cfg_scale=scale,
                     cfg_schedule=cfg_schedule, **kw))


LEFT = schedules.mask_counts("cosine", N, STEPS)  # 9, 7, 3, 0
BEFORE = np.concatenate([[N], LEFT[:-1]])
START = N - BEFORE  # known tokens before each iteration: 0, 1, 3, 7


def test_each_position_once_in_scheduled_order_with_disa_steps():
  plain, _ = _run(KEY(0), 0.0, 1.0)
  tok, order, step = map(np.asarray, plain)
  np.testing.assert_array_equal(LEFT, [9, 7, 3, 0])
  for b in range(B):
    assert sorted(order[b].tolist()) == list(range(N))  # a permutation
    for s in range(STEPS):
      pos = order[b, START[s]:START[s] + BEFORE[s] - LEFT[s]]  # revealed at iteration s
      np.testing.assert_array_equal(step[b, pos], s)
      # value = tokens known when it was generated (+10 for the label); a position generated
      # twice would carry a later count, one never generated would be 0
      np.testing.assert_allclose(tok[b, pos, 0], START[s] + 10.0)
      np.testing.assert_allclose(tok[b, pos, 1], 1 - 1 / HEAD[s], atol=1e-6)  # DiSA step count
  np.testing.assert_array_equal(HEAD, [7, 5, 3, 2])


def test_order_reproducible_and_guidance():
  plain, neutral = _run(KEY(1), 1.0, 1.0)
  again, _ = _run(KEY(1), 1.0, 1.0)
  other, _ = _run(KEY(2), 1.0, 1.0)
  np.testing.assert_array_equal(plain.order, again.order)
  np.testing.assert_array_equal(plain.tokens, again.tokens)
  np.testing.assert_array_equal(plain.order, mar.random_order(jax.random.fold_in(KEY(1), 0), B, N))
  assert not np.array_equal(plain.order, other.order)
  # scale 1 is the conditional model (up to XLA fusing the two programs differently: 1 ulp)
  np.testing.assert_allclose(neutral.tokens, plain.tokens, rtol=1e-6, atol=1e-7)
  # CFG on the head's velocity, MAR's linear schedule: c - u = 10 (label 1 vs 0), so the first
  # coordinate is known + 10 + (g - 1) r_s 10 with r_s = tokens known after iteration s / N.
  _, guided = _run(KEY(0), 0.0, 3.0)
  tok, order = np.asarray(guided.tokens), np.asarray(guided.order)
  for s in range(STEPS):
    pos = order[0, START[s]:START[s] + BEFORE[s] - LEFT[s]]
    r = (N - LEFT[s]) / N
    np.testing.assert_allclose(tok[0, pos, 0], START[s] + 10 + 2.0 * r * 10, rtol=1e-5)
  _, const = _run(KEY(0), 0.0, 3.0, cfg_schedule="constant")
  np.testing.assert_allclose(np.asarray(const.tokens)[..., 0],
                             START[np.asarray(const.step)] + 30.0, rtol=1e-5)


def test_errors():
  kw = dict(batch=B, num_tokens=N, token_dim=2, steps=STEPS, head_steps=3)
  run = lambda **o: mar.sample(KEY(0), condition_fn, head_fn, **{**kw, **o})
  with pytest.raises(ValueError, match="steps must be <= num_tokens=10, got 11"):
    run(steps=11)
  with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
    run(steps=0)
  with pytest.raises(ValueError, match="head_steps must be an int >= 1 or 4 ints"):
    run(head_steps=[3, 2])
  with pytest.raises(ValueError, match="head_steps must be an int >= 1, got 0"):
    run(head_steps=0)
  with pytest.raises(ValueError, match="temperature must be >= 0"):
    run(temperature=-1.0)
