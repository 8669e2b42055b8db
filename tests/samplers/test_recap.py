import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.generators import bert
from jaxtok.samplers import maskgit, recap

KEY = functools.partial(jax.random.key, impl="rbg")  # see tests/samplers/test_masked_diffusion.py

V, N, STEPS = 8, 12, 6


def _model(depth, seed=0):
  m = bert.MaskGITTransformer(codebook_size=V, seq_len=N, num_classes=3, width=16, depth=depth,
                              heads=2, class_dropout=0.0, rngs=nnx.Rngs(seed))
  m.net.head.kernel[...] = m.net.head.kernel[...] * 20.0  # confident, so choices are not ties
  return m


@pytest.fixture(scope="module")
def one_layer():
  return _model(1)


def test_schedule_groups_and_call_counts():
  assert recap.groups(8, 2, 1) == [(0, 1), (1, 3), (4, 3), (7, 1)]
  assert recap.groups(5, 0) == [(s, 1) for s in range(5)]
  assert recap.groups(4, 9) == [(0, 4)]
  left = recap.remaining_counts("cosine", N, STEPS)
  assert left[0] == N and left[-1] == 0 and np.all(np.diff(left) < 0)
  assert recap.max_group_tokens("cosine", N, STEPS, 2) == max(left[0] - left[3], left[3] - left[6])


def test_full_pass_logits_and_cheap_step_exact_for_one_layer(one_layer):
  m2 = _model(2, seed=1)
  labels = jnp.asarray([0, 2])
  rs = np.random.RandomState(0)
  old = jnp.asarray(np.where(rs.rand(2, N) < 0.5, V, rs.randint(0, V, (2, N))), jnp.int32)
  pos = jnp.asarray([[1, 4, 7], [0, 5, 11]], jnp.int32)
  new = old.at[jnp.arange(2)[:, None], pos].set(jnp.asarray([[3, V, 1], [V, 2, 6]]))
  def passes(m):
    full, cache = m.logits_and_cache(old, labels, extra_slots=3)
    cheap = m.cached_logits(jnp.take_along_axis(new, pos, 1), pos, cache)
    same = m.cached_logits(jnp.take_along_axis(old, pos, 1), pos, cache)
    return full, m(old, labels), cheap, jnp.take_along_axis(m(new, labels), pos[..., None], 1), same

  for m, exact in [(one_layer, True), (m2, False)]:
    full, plain, cheap, ref, same = jax.jit(passes)(m)
    np.testing.assert_allclose(full, plain, atol=1e-4)
    if exact:  # one layer: the cached keys/values of unchanged positions are what a full pass gives
      np.testing.assert_allclose(cheap, ref, atol=1e-4)
    else:  # deeper: they are stale (the changed tokens moved the other positions' features)
      assert np.abs(np.asarray(cheap - ref)).max() > 1e-3
    # with unchanged tokens the cheap step is exact at any depth
    np.testing.assert_allclose(same, jnp.take_along_axis(full, pos[..., None], 1), atol=1e-4)


def test_recap_without_cheap_steps_is_maskgit_and_runs_cheap_steps(one_layer):
  m = one_layer
  labels = jnp.asarray([0, 1, 2, 0])
  q = recap.max_group_tokens("cosine", N, STEPS, 2)
  full_fn = lambda t, y: m.logits_and_cache(t, y, extra_slots=q)
  cheap_fn = lambda t, p, cache, y: m.cached_logits(t, p, cache)

  @jax.jit
  def run(rng):
    kw = dict(batch=4, num_tokens=N, mask_id=V, steps=STEPS, cond=labels)
    r0, s0 = recap.sample(rng, full_fn, cheap_fn, cheap_steps=0, **kw)
    ref, _ = maskgit.sample(rng, lambda t, y: full_fn(t, y)[0], jnp.full((4, N), V, jnp.int32),
                            mask_id=V, steps=STEPS, cond=labels)
    r2, s2 = recap.sample(rng, full_fn, cheap_fn, cheap_steps=2, **kw)
    return r0, ref, r2, s0, s2

  r0, ref, r2, s0, s2 = run(KEY(0))
  np.testing.assert_array_equal(r0, ref)
  assert s0 == {"full_calls": STEPS, "cheap_calls": 0}
  assert s2 == {"full_calls": 2, "cheap_calls": 4}
  r2 = np.asarray(r2)
  assert np.all((r2 >= 0) & (r2 < V))  # every position revealed, never the mask id
  assert not np.array_equal(r2, np.asarray(ref))  # cheap steps draw their own tokens


def test_errors(one_layer):
  fn = lambda t, y: one_layer.logits_and_cache(t, y, extra_slots=4)
  with pytest.raises(ValueError, match="cheap_steps must be an int >= 0, got -1"):
    recap.sample(KEY(0), fn, None, batch=1, num_tokens=N, mask_id=V, steps=4, cheap_steps=-1)
  with pytest.raises(ValueError, match=f"steps must be <= num_tokens={N}, got 13"):
    recap.sample(KEY(0), fn, None, batch=1, num_tokens=N, mask_id=V, steps=13)
