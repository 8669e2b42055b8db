"""The learned unmasking policy: its selection respects the mask, rollouts reveal everything,
group-relative advantages by hand, and the GRPO loss has a policy gradient."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok.samplers import unmasking_policy as up
from tests.samplers.test_masked_diffusion import KEY, MASK, P, exact_logits


def test_selection_respects_the_mask_and_reveals_everything():
  policy = up.UnmaskingPolicy(width=16, heads=2, rngs=nnx.Rngs(0))
  # A policy that wants to unmask everything: only masked positions may be selected.
  eager = lambda f: jnp.full(f.shape[:2], 20.0)
  given = jnp.asarray([[1, MASK, MASK], [MASK, 2, MASK], [0, 1, 2]], jnp.int32)
  out = up.rollout(KEY(0), eager, exact_logits, given, mask_id=MASK, max_steps=3)
  np.testing.assert_array_equal(np.asarray(out.step_of), [[-1, 0, 0], [0, -1, 0], [-1, -1, -1]])
  np.testing.assert_array_equal(np.asarray(out.tokens)[np.asarray(given) != MASK],
                                np.asarray(given)[np.asarray(given) != MASK])
  np.testing.assert_array_equal(np.asarray(out.calls), [1, 1, 0])
  # The features mark revealed positions (confidence 0, flag 0); a reluctant policy still makes
  # progress (fallback) and the last step reveals the rest; the trained module runs too.
  f = up.features(exact_logits(given), given == MASK)
  np.testing.assert_array_equal(np.asarray(f[..., 1]), np.asarray(given == MASK, np.float32))
  assert float(f[0, 0, 0]) == 0.0 and float(f[0, 1, 0]) > 0.0
  shy = lambda f: jnp.full(f.shape[:2], -20.0)
  out = up.rollout(KEY(1), shy, exact_logits, jnp.full((2, 3), MASK), mask_id=MASK,
                   max_steps=2)
  assert np.asarray(out.tokens).max() < MASK and np.asarray(out.calls).tolist() == [2, 2]
  out = up.rollout(KEY(1), policy, exact_logits, given, mask_id=MASK, max_steps=3)
  assert np.asarray(out.tokens).max() < MASK and (np.asarray(out.step_of)[2] == -1).all()


def test_group_advantages_and_grpo_gradient():
  adv = up.group_advantages(jnp.asarray([1.0, 3.0, 5.0, 5.0]), 2)
  np.testing.assert_allclose(adv, [-1.0, 1.0, 0.0, 0.0], atol=1e-5)
  policy = up.UnmaskingPolicy(width=16, heads=2, rngs=nnx.Rngs(0))
  logp_true = jnp.log(jnp.asarray(P, jnp.float32)).reshape(-1)
  reward = lambda tok: logp_true[tok @ jnp.asarray([9, 3, 1])]
  graphdef, params = nnx.split(policy)
  f = lambda p: up.grpo_loss(nnx.merge(graphdef, p), KEY(0), exact_logits, reward,
                             jnp.full((2, 3), MASK), mask_id=MASK, group=4, max_steps=3,
                             nfe_penalty=0.1)
  (value, metrics), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
  assert np.isfinite(float(value)) and 1.0 <= float(metrics["calls"]) <= 3.0
  assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)) > 0
