"""The KV-cached next-X sampler (`next_x.sample_cached` over `XAR.extend`) against the whole-sequence
recompute (`next_x.sample` over `XAR.velocity`) on one tiny xAR with random weights, for every
entity kind, and the model calls each path makes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.generators import xar
from jaxtok.samplers import next_x

# float32: the two paths differ only in the attention's summation (masked keys skipped vs. cached);
# over E entities x STEPS Euler steps of a random network it stayed below 2e-5 (cell, guided).
ATOL = 1e-4
STEPS = 2
KINDS = [("token", 1), ("cell", 2), ("subsample", 2), ("scale", 0), ("image", 1)]


def _model(kind, k):
  """A 2-layer xAR on a 4 x 4 grid of 2-dim tokens with every parameter randomised (a fresh AdaLN
  block is the identity, which would hide any attention error)."""
  m = xar.XAR(token_dim=2, seq_len=16, entity=kind, entity_size=k, num_classes=3, width=16,
              depth=2, heads=2, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(m)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  leaves = [a + 0.3 * jax.random.normal(r, a.shape, a.dtype) for a, r in zip(leaves, keys)]
  return graphdef, jax.tree.unflatten(tree, leaves)


def _both(graphdef, params, guided):
  """(cached, recomputed) samples [2, T, 2] of one jit each, same key."""
  labels = jnp.array([0, 2])
  kw = dict(batch=2, token_dim=2, steps=STEPS, cond=labels,
            uncond=jnp.full_like(labels, -1) if guided else None, cfg_scale=2.0 if guided else 1.0)

  @jax.jit
  def run(params, rng):
    m = nnx.merge(graphdef, params)
    cached = next_x.sample_cached(rng, m.extend, m.init_cache, entity_ids=m.entity_ids, **kw)
    full = next_x.sample(rng, m.velocity, entity_ids=m.entity_ids, **kw)
    return cached, full

  return run(params, jax.random.key(3))


@pytest.mark.parametrize("kind,k", KINDS)
def test_cached_equals_recompute_for_every_entity_kind(kind, k):
  graphdef, params = _model(kind, k)
  cached, full = _both(graphdef, params, guided=kind in ("cell", "scale"))
  assert cached.shape == full.shape == (2, nnx.merge(graphdef, params).layout.length, 2)
  assert float(jnp.abs(full).max()) > 0.1  # a non-trivial sample
  np.testing.assert_allclose(cached, full, atol=ATOL, rtol=0)


def test_one_prefill_per_entity_and_no_whole_sequence_call():
  """cell 2 x 2 on 4 x 4: E = 4 entities of L = 4 tokens, T = 16. Cached: E x STEPS flow calls and
  E - 1 prefills (t = 0), every one on L tokens; the reference: E x STEPS calls on all T."""
  graphdef, params = _model("cell", 2)
  m = nnx.merge(graphdef, params)
  calls = []

  def extend(x, t, start, cache, c):
    jax.debug.callback(lambda tmax, n=x.shape[1]: calls.append((n, float(tmax))), t.max())
    return m.extend(x, t, start, cache, c)

  def velocity(x, t, c):
    jax.debug.callback(lambda n=x.shape[1]: calls.append((n, None)))
    return m.velocity(x, t, c)

  kw = dict(batch=2, entity_ids=m.entity_ids, token_dim=2, steps=3, cond=jnp.array([0, 1]),
            uncond=jnp.array([-1, -1]), cfg_scale=2.0)
  jax.block_until_ready(jax.jit(lambda r: next_x.sample_cached(r, extend, m.init_cache, **kw))(
      jax.random.key(0)))
  prefills = [c for c in calls if c[1] == 0.0]
  steps = [c for c in calls if c[1] != 0.0]
  assert len(prefills) == 4 - 1 and len(steps) == 4 * 3
  assert {n for n, _ in calls} == {4}  # never the whole 16-position sequence
  calls.clear()
  jax.block_until_ready(jax.jit(lambda r: next_x.sample(r, velocity, **kw))(jax.random.key(0)))
  assert calls == [(16, None)] * (4 * 3)


def test_entity_runs_and_extend_refuses_a_wrong_token_dim():
  ids = xar.XAR(token_dim=2, seq_len=16, entity="scale", entity_size=0, width=16, depth=1, heads=2,
                rngs=nnx.Rngs(0)).entity_ids  # scales 1 x 1, 2 x 2, 4 x 4
  assert next_x.runs(ids) == [(0, 1, 1, 0), (1, 1, 4, 1), (2, 1, 16, 5)]
  assert next_x.runs(np.repeat(np.arange(4), 4)) == [(0, 4, 4, 0)]
  graphdef, params = _model("cell", 2)
  m = nnx.merge(graphdef, params)
  with pytest.raises(ValueError, match=r"x must be \[B, L <= 16, 2\], got \(1, 4, 3\)"):
    m.extend(jnp.zeros((1, 4, 3)), jnp.zeros((1, 4)), 0, m.init_cache(1))
