"""GRPO training of the learned unmasking policy (`unmasking_policy.train`) on a toy where the best
policy is known: K = 4 positions that are copies of one uniform symbol of 3, the frozen denoiser the
exact conditionals of that joint, reward 1 for a valid sample (all positions equal). Revealing n
positions in one step draws them independently (all equal with probability 3^-(n-1)); revealing one
first makes every other position certain, so the best policies reveal a single position at the
first step (reward 1). The untrained policy reveals each position with probability 0.9, about 3.6
at the first step: reward about 0.05.

No call penalty here: with one, a group whose G rollouts all fail gets advantages from the penalty
alone (normalised by its tiny std to +-1), and from this start GRPO then converges to revealing
everything in one call (measured with penalty 0.02 and 0.1, 60 updates: the valid fraction fell
from 0.07 to 0.035, every rollout one call)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxtok.samplers import unmasking_policy as up

K, V, MASK = 4, 3, 3
SUPPORT = jnp.asarray(np.repeat(np.arange(V)[:, None], K, axis=1))  # [3, K]: (c, c, c, c)
PENALTY = 0.0  # see the module docstring


def copies_logits(tokens):
  """Exact p(x_k | revealed tokens) [B, K, V] of the copies joint, by enumerating its support (an
  impossible value gets logit -1e9)."""
  fits = jnp.all((tokens[:, None] == MASK) | (tokens[:, None] == SUPPORT[None]), -1)  # [B, S]
  w = fits.astype(jnp.float32) / jnp.maximum(fits.sum(-1, keepdims=True), 1)
  p = jnp.einsum("bs,skv->bkv", w, jax.nn.one_hot(SUPPORT, V))
  return jnp.where(p > 0, jnp.log(jnp.maximum(p, 1e-30)), -1e9)


def valid(tokens):
  """float32 [N]: 1 where the sample lies in the support (all positions equal)."""
  return jnp.all(tokens == tokens[:, :1], -1).astype(jnp.float32)


def test_exact_toy_denoiser():
  p = jnp.exp(copies_logits(jnp.asarray([[MASK] * K, [2, MASK, MASK, MASK]])))
  np.testing.assert_allclose(p[0], 1 / 3, atol=1e-6)
  np.testing.assert_allclose(p[1, 1:], jax.nn.one_hot(jnp.full((3,), 2), V), atol=1e-6)


def _evaluate(graphdef, params, n=512):
  """(mean reward, mean positions revealed at the first step) over n rollouts of fixed keys."""
  out = up.rollout(jax.random.key(123), nnx.merge(graphdef, params), copies_logits,
                   jnp.full((n, K), MASK), mask_id=MASK, max_steps=K)
  reward = valid(out.tokens) - PENALTY * out.calls
  return float(reward.mean()), float((out.step_of == 0).sum(-1).mean())


def test_grpo_training_raises_the_reward_toward_the_best_policy():
  graphdef, params = nnx.split(up.UnmaskingPolicy(width=16, heads=2, rngs=nnx.Rngs(0)))
  tx = optax.adam(3e-2)
  prompts = jnp.full((8, K), MASK)  # 8 prompts x group 8 = 64 rollouts per update
  train = jax.jit(lambda p, s: up.train(
      jax.random.key(7), graphdef, p, tx, s, copies_logits,
      lambda tok: valid(tok), prompts, updates=30, mask_id=MASK, group=8, max_steps=K,
      nfe_penalty=PENALTY))
  before, first_before = _evaluate(graphdef, params)
  trained, _, metrics = train(params, tx.init(params))
  after, first_after = _evaluate(graphdef, trained)
  print(f"reward {before:.3f} -> {after:.3f}; revealed at step 0 {first_before:.2f} -> "
        f"{first_after:.2f}; per-update reward {np.asarray(metrics['reward'])[[0, -1]]}")
  assert metrics["reward"].shape == (30,)
  assert before < 0.2 and after > before + 0.6 and after > 0.9
  assert first_before > 3.0 and first_after < 1.3  # toward "one position first"


def test_train_refuses_bad_counts():
  graphdef, params = nnx.split(up.UnmaskingPolicy(width=16, heads=2, rngs=nnx.Rngs(0)))
  tx = optax.adam(1e-2)
  run = lambda **kw: up.train(jax.random.key(0), graphdef, params, tx, tx.init(params),
                              copies_logits, valid, jnp.full((2, K), MASK), mask_id=MASK,
                              max_steps=K, **kw)
  with pytest.raises(ValueError, match="updates"):
    run(updates=0, group=2)
  with pytest.raises(ValueError, match="group"):
    run(updates=1, group=0)
