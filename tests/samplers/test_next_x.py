"""Tests of the next-X (xAR) sampler with fixed, analytic velocity fields."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.samplers import next_x

IDS = np.array([0, 0, 1, 1, 1, 2])  # three entities of sizes 2, 3, 1


def _point_mass_field(x, t, cond):
  """The exact FlowHead-convention velocity (x - c) / t towards a point mass c per position, with
  c = 1 + (sum of the clean context, i.e. positions of earlier entities at t == 0), per dimension;
  cond [B] adds cond * 10."""
  ids = jnp.asarray(IDS)
  earlier = (ids[None, :] < ids[:, None]).astype(jnp.float32)  # [T(query), T(key)]
  ctx = jnp.einsum("qk,bkd->bqd", earlier, x * (t == 0.0)[..., None].astype(x.dtype))
  c = 1.0 + ctx + (0.0 if cond is None else 10.0 * cond[:, None, None])
  return (x - c) / jnp.maximum(t, 1e-6)[..., None]


def _expected(cond):
  """Entity by entity, every position of entity e lands on 1 + 10 cond + sum of entities < e."""
  out = np.zeros((len(cond), IDS.size, 2), np.float32)
  for e in range(3):
    ctx = out[:, IDS < e].sum(1, keepdims=True)
    out[:, IDS == e] = 1.0 + 10.0 * np.asarray(cond)[:, None, None] + ctx
  return out


def test_exact_field_lands_on_its_targets_with_clean_context():
  """Euler on the exact straight-path field reaches the point mass from any noise, so the sample is
  the hand recursion iff each entity saw the earlier ones clean at t = 0 and nothing later."""
  cond = jnp.array([0.0, 1.0])
  seq = jax.jit(lambda r: next_x.sample(r, _point_mass_field, batch=2, entity_ids=IDS, token_dim=2,
                                        steps=3, cond=cond))(jax.random.key(0))
  np.testing.assert_allclose(seq, _expected(cond), rtol=1e-4, atol=1e-4)


def test_one_model_call_per_entity_per_flow_step_and_deterministic():
  calls = []

  def counted(x, t, cond):
    jax.debug.callback(lambda: calls.append(1))
    return _point_mass_field(x, t, cond) * 0.5 + x  # any field

  run = jax.jit(lambda r: next_x.sample(r, counted, batch=2, entity_ids=IDS, token_dim=2, steps=4,
                                        cond=jnp.zeros(2), uncond=jnp.ones(2), cfg_scale=3.0))
  a = run(jax.random.key(1))
  jax.block_until_ready(a)
  assert len(calls) == 3 * 4  # E entities x 4 steps; guidance doubles the batch, not the calls
  b = run(jax.random.key(1))
  jax.block_until_ready(b)
  np.testing.assert_array_equal(a, b)  # fixed key, fixed model: the same sample
  assert not np.allclose(run(jax.random.key(2)), a)
  assert len(calls) == 3 * 3 * 4
  calls.clear()
  heun = next_x.sample(jax.random.key(1), counted, batch=1, entity_ids=IDS, token_dim=2, steps=2,
                       method="heun")
  jax.block_until_ready(heun)
  assert len(calls) == 3 * 2 * 2  # Heun: two evaluations per step


def test_guidance_at_scale_one_is_the_conditional_sample_and_bad_inputs():
  run = lambda **kw: next_x.sample(jax.random.key(0), _point_mass_field, batch=2, entity_ids=IDS,
                                   token_dim=2, steps=2, cond=jnp.array([0.0, 1.0]), **kw)
  np.testing.assert_allclose(run(uncond=jnp.zeros(2), cfg_scale=1.0), run(), atol=1e-6)
  # Guidance follows u + s (c - u) with s rising linearly over entities from 1 (first entity).
  guided = np.asarray(run(uncond=jnp.zeros(2), cfg_scale=3.0))
  np.testing.assert_allclose(guided[1, IDS == 0], 11.0, atol=1e-4)  # entity 0: s = 1
  with pytest.raises(ValueError, match="entity_ids must be"):
    next_x.sample(jax.random.key(0), _point_mass_field, batch=1, entity_ids=[0, 2], token_dim=2,
                  steps=1)
  with pytest.raises(ValueError, match="steps"):
    next_x.sample(jax.random.key(0), _point_mass_field, batch=1, entity_ids=IDS, token_dim=2,
                  steps=0)
