"""NAR: the decoding order, the near-causal mask and the head sources by hand on a 3x3 grid; 2n - 1
model calls; the cached sampler equals recompute; the mask's independence in the model; errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.generators import nar as nar_lib
from jaxtok.samplers import neighbor

CFG = dict(codebook_size=11, seq_len=9, num_classes=3, width=32, depth=2, heads=4, class_dropout=0.1)


def _model(**kw):
  return nar_lib.NAR(**{**CFG, **kw}, rngs=nnx.Rngs(0))


def test_order_mask_and_sources_3x3_by_hand():
  # raster indices   distances
  #   0 1 2            0 1 2
  #   3 4 5            1 2 3
  #   6 7 8            2 3 4
  np.testing.assert_array_equal(nar_lib.distance_map(3, 3), [0, 1, 2, 1, 2, 3, 2, 3, 4])
  np.testing.assert_array_equal(nar_lib.diagonals(3, 3), [[0, -1, -1], [1, 3, -1], [2, 4, 6],
                                                          [5, 7, -1], [8, -1, -1]])
  mask = nar_lib.near_causal_mask(3, 3)  # over [cond, t0..t8]
  want = np.zeros((10, 10), bool)
  want[:, 0] = True                      # everyone sees the condition; it sees only itself
  seen_by_distance = {0: [0], 1: [0, 1, 3], 2: [0, 1, 3, 2, 4, 6], 3: [0, 1, 3, 2, 4, 6, 5, 7],
                      4: list(range(9))}
  dist = [0, 1, 2, 1, 2, 3, 2, 3, 4]
  for t in range(9):
    want[1 + t, [1 + k for k in seen_by_distance[dist[t]]]] = True
  np.testing.assert_array_equal(mask, want)
  # Token 4 = (1, 1) sees 1 and 3 (distance 1) and its own diagonal 2, 6, not 5, 7, 8.
  assert mask[5, [2, 4, 3, 7]].all() and not mask[5, [6, 8, 9]].any()
  left, above = nar_lib.target_sources(3, 3)   # slots: 0 = cond, 1 + raster index
  np.testing.assert_array_equal(left, [0, 1, 2, -1, 4, 5, -1, 7, 8])
  np.testing.assert_array_equal(above, [0, -1, -1, 1, 2, 3, 4, 5, 6])
  sl, sa = nar_lib.step_sources(3, 3)          # entries of the previous diagonal
  np.testing.assert_array_equal(sl[1:], [[0, -1, -1], [0, 1, -1], [1, 2, -1], [1, -1, -1]])
  np.testing.assert_array_equal(sa[1:], [[-1, 0, -1], [-1, 0, 1], [0, 1, -1], [0, -1, -1]])


def test_teacher_forcing_respects_the_mask():
  """Changing the tokens of distance >= 3 leaves the logits of every token of distance <= 3 alone
  (they are predicted from distances <= 2) and changes those of distance 4."""
  model = _model()
  a = jax.random.randint(jax.random.key(1), (2, 9), 0, 11)
  far = nar_lib.distance_map(3, 3) >= 3
  b = jnp.where(far, (a + 1) % 11, a)
  la, lb = model(a, jnp.array([0, 1])), model(b, jnp.array([0, 1]))
  near = nar_lib.distance_map(3, 3) <= 3
  np.testing.assert_allclose(la[:, near], lb[:, near], atol=1e-6)
  assert not np.allclose(la[:, ~near], lb[:, ~near])


def test_cache_steps_equal_teacher_forced_logits():
  model = _model(seq_len=12, grid_width=4)  # a 3x4 grid: 6 diagonals of at most 3 tokens
  tokens = jax.random.randint(jax.random.key(2), (2, 12), 0, 11)
  labels = jnp.array([2, -1])
  full = model(tokens, labels)
  diag = nar_lib.diagonals(3, 4)
  cache = model.init_cache(2)
  logits, cache = model.prefill(model.condition_ids(labels, 2)[:, None], cache)
  np.testing.assert_allclose(logits, full[:, 0], atol=1e-5)
  for d in range(diag.shape[0] - 1):
    step_in = tokens[:, np.maximum(diag[d], 0)]
    logits, cache = model.step(step_in, jnp.int32(d), cache)
    real = diag[d + 1] >= 0
    np.testing.assert_allclose(logits[:, real], full[:, diag[d + 1][real]], atol=1e-5,
                               err_msg=f"diagonal {d + 1}")


@pytest.mark.parametrize("guided", [False, True])
def test_sampler_calls_2n_minus_1_and_equals_recompute(guided):
  model = _model()
  graphdef, state = nnx.split(model)
  rng = jax.random.key(3)
  labels = jnp.array([1, 2])
  diag = model.diag
  calls = []

  @jax.jit
  def cached(state):
    m = nnx.merge(graphdef, state)
    prompt = m.condition_ids(labels, 2)[:, None]
    uncond = jnp.full_like(prompt, m.null_id) if guided else None

    def counted(fn):
      def run(*args):
        jax.debug.callback(lambda: calls.append(1))
        return fn(*args)
      return run
    return neighbor.sample(rng, counted(m.prefill), counted(m.step), m.init_cache(4 if guided else 2),
                           prompt, diagonals=diag, top_k=6, uncond_prompt_tokens=uncond,
                           cfg_scale=2.0 if guided else 1.0)

  got = jax.block_until_ready(cached(state))
  assert len(calls) == 2 * 3 - 1 == neighbor.num_model_calls(diag)  # 5 calls for 9 tokens
  assert got.shape == (2, 9) and got.dtype == jnp.int32 and 0 <= got.min() and got.max() < 11
  prompt = model.condition_ids(labels, 2)[:, None]
  want = neighbor.sample_recompute(
      rng, lambda p, t: model(t, jnp.concatenate([labels, -jnp.ones_like(labels)]) if guided
                              else labels), prompt, diagonals=diag, top_k=6,
      uncond_prompt_tokens=jnp.full_like(prompt, model.null_id) if guided else None,
      cfg_scale=2.0 if guided else 1.0)
  np.testing.assert_array_equal(got, want)


def test_bad_arguments():
  with pytest.raises(ValueError, match="seq_len must be a square number"):
    _model(seq_len=8)
  with pytest.raises(ValueError, match="tokens must have seq_len=9 positions, got 4"):
    _model()(jnp.zeros((1, 4), jnp.int32))
  with pytest.raises(ValueError, match=r"prompt must be condition ids \[B, 1\], got shape \(1, 2\)"):
    m = _model()
    m.prefill(jnp.zeros((1, 2), jnp.int32), m.init_cache(1))
  with pytest.raises(ValueError, match=r"tokens must be int32 \[B, L=3\] .*got shape \(1, 9\)"):
    m = _model()
    m.step(jnp.zeros((1, 9), jnp.int32), 0, m.init_cache(1))
  with pytest.raises(ValueError, match="diagonals must hold each raster index"):
    neighbor.sample(jax.random.key(0), None, None, None, jnp.zeros((1, 1), jnp.int32),
                    diagonals=np.array([[0, 0]]))
  with pytest.raises(ValueError, match=r"needs a boolean mask over the cache slots, got None"):
    m = _model()
    m.net.extend_features(jnp.zeros((1, 1, 32)), 0, m.init_cache(1), causal=False)


def test_make_model_config_is_strict():
  m = nar_lib.make_model({"name": "nar", **CFG, "seq_len": 6, "grid_width": 3}, rngs=nnx.Rngs(0))
  assert m.grid == (2, 3) and m.num_slots == 1 + 4 * 2
  with pytest.raises(ValueError, match=r"nar config 'grid_width' must be int, got '3'"):
    nar_lib.make_model({"name": "nar", **CFG, "grid_width": "3"}, rngs=nnx.Rngs(0))
