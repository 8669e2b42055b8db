"""ResGen: depth-wise masking by hand, exact re-quantisation, the mixture NLL by hand, the sampler
recovering a target from an exact predictor, config errors (training through the tools:
tests/tools/test_resgen_tools.py)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.generators import resgen as rg
from jaxtok.quantizers import residual, vq
from jaxtok.samplers import resgen as sampler


def _mask(scores, count, q):
  return np.asarray(rg.depthwise_mask(jnp.asarray([scores]), jnp.asarray([count]), q))[0].astype(int)


def test_depthwise_mask_by_hand():
  # 3 positions, 3 levels; positions by score, highest first: 2 (0.9), 0 (0.3), 1 (0.1).
  s = [0.3, 0.1, 0.9]
  assert _mask(s, 0, 3).sum() == 0
  # Level 2 (deepest) first, highest-scored position first.
  np.testing.assert_array_equal(_mask(s, 1, 3), [[0, 0, 0], [0, 0, 0], [0, 0, 1]])
  np.testing.assert_array_equal(_mask(s, 2, 3), [[0, 0, 1], [0, 0, 0], [0, 0, 1]])
  np.testing.assert_array_equal(_mask(s, 3, 3), [[0, 0, 1], [0, 0, 1], [0, 0, 1]])
  # Then level 1, same position order.
  np.testing.assert_array_equal(_mask(s, 4, 3), [[0, 0, 1], [0, 0, 1], [0, 1, 1]])
  np.testing.assert_array_equal(_mask(s, 5, 3), [[0, 1, 1], [0, 0, 1], [0, 1, 1]])
  np.testing.assert_array_equal(_mask(s, 7, 3), [[0, 1, 1], [0, 1, 1], [1, 1, 1]])
  assert _mask(s, 9, 3).sum() == 9


def test_training_mask_is_a_suffix_per_position_with_the_schedule_count():
  m = np.asarray(_jit_mask(0, 64, 5, 4))
  assert m.shape == (64, 5, 4)
  # Masked levels form a suffix: once masked, every deeper level is masked.
  assert not np.any(m[..., :-1] & ~m[..., 1:])
  counts = m.sum(axis=(1, 2))
  assert counts.min() >= 1 and counts.max() <= 20
  # Whole levels are masked before the next shallower one is touched.
  per_level = m.sum(axis=1)  # [B, Q]
  for row in per_level:
    partial = [q for q in range(4) if 0 < row[q] < 5]
    assert len(partial) <= 1
    if partial:
      assert np.all(row[partial[0] + 1:] == 5) and np.all(row[:partial[0]] == 0)
  # cosine gamma(t), t ~ U(0, 1), n = ceil(20 gamma(t)) clipped to [1, 20]: the mean masked
  # fraction (a midpoint rule over t) is 2 / pi plus ~ 1 / 40 from the ceiling.
  t = (np.arange(100_000) + 0.5) / 100_000
  want = np.clip(np.ceil(20 * np.cos(t * math.pi / 2)), 1, 20).mean() / 20
  many = np.asarray(_jit_mask(1, 2000, 5, 4)).mean()
  assert abs(many - want) < 0.02  # the sd of the mean is ~ 0.007


def _jit_mask(seed, b, n, q):
  return jax.jit(rg.training_mask, static_argnums=(1, 2, 3))(jax.random.key(seed), b, n, q)


def _hypercube_tables(q, e, scale=0.1):
  """[Q, 2^E, E]: level q's codes are the cube corners scaled by scale^q: greedy RVQ of any sum of
  one code per level is unique (the tail is smaller than half the level's code spacing)."""
  corners = np.array([[1.0 if (c >> i) & 1 else -1.0 for i in range(e)] for c in range(2**e)])
  return jnp.asarray(np.stack([corners * scale**i for i in range(q)]), jnp.float32)


def test_requantize_recovers_the_masked_codes_from_the_exact_collective_vector():
  table = _hypercube_tables(3, 3)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 8, (4, 6, 3)), jnp.int32)
  mask = _jit_mask(1, 4, 6, 3)
  partial, collective = jax.jit(rg.split_sums)(tokens, mask, table)
  # The two sums partition the position's full latent (the RVQ reconstruction).
  states = [vq.VQState(table[i], jnp.zeros((8,)), table[i], jnp.asarray(True)) for i in range(3)]
  np.testing.assert_allclose(partial + collective, residual.rvq_indices_to_codes(tokens, states),
                             atol=1e-6)
  out = np.asarray(jax.jit(rg.requantize)(collective, mask, table))
  m = np.asarray(mask)
  np.testing.assert_array_equal(out[m], np.asarray(tokens)[m])
  assert np.all(out[~m] == 0)


def test_requantize_matches_rvq_greedy_on_the_tokenizers_residual():
  """Tokens made by `residual.rvq_quantize` of arbitrary latents: the predicted vector x - partial
  (the exact collective vector plus the tokenizer's final error) re-quantises to the same codes."""
  rng = np.random.default_rng(2)
  table = jnp.asarray(rng.normal(size=(3, 16, 4)) * 0.5 ** np.arange(3)[:, None, None], jnp.float32)
  states = [vq.VQState(table[i], jnp.zeros((16,)), table[i], jnp.asarray(True)) for i in range(3)]
  x = jnp.asarray(rng.normal(size=(2, 5, 4)), jnp.float32)
  tokens = jax.jit(lambda x: residual.rvq_quantize(x, states).indices)(x)
  mask = _jit_mask(4, 2, 5, 3)
  partial, _ = jax.jit(rg.split_sums)(tokens, mask, table)
  out = np.asarray(jax.jit(rg.requantize)(x - partial, mask, table))
  m = np.asarray(mask)
  np.testing.assert_array_equal(out[m], np.asarray(tokens)[m])


def test_mog_nll_by_hand():
  # Weights 1/4, 3/4; component 0: N(0, 1), component 1: N(2, 2^2); x = 1 (one dimension).
  logits = jnp.asarray([0.0, math.log(3.0)])
  means = jnp.asarray([[0.0], [2.0]])
  log_scales = jnp.asarray([[0.0], [math.log(2.0)]])
  p = 0.25 * math.exp(-0.5) / math.sqrt(2 * math.pi) + 0.75 * math.exp(-0.125) / (2 * math.sqrt(2 * math.pi))
  np.testing.assert_allclose(rg.mog_nll(logits, means, log_scales, jnp.asarray([1.0])), -math.log(p),
                             rtol=1e-6)
  # Two dimensions, one component: the sum of the per-dimension Gaussian NLLs.
  nll = rg.mog_nll(jnp.zeros((1,)), jnp.asarray([[1.0, -1.0]]), jnp.asarray([[0.0, math.log(0.5)]]),
                   jnp.asarray([0.0, 0.0]))
  want = (0.5 + 0.5 * math.log(2 * math.pi)) + (0.5 * 4.0 + math.log(0.5) + 0.5 * math.log(2 * math.pi))
  np.testing.assert_allclose(nll, want, rtol=1e-6)


def test_mog_sample_picks_components_by_weight():
  logits = jnp.broadcast_to(jnp.asarray([0.0, math.log(3.0)]), (4000, 2))
  means = jnp.broadcast_to(jnp.asarray([[-5.0], [5.0]]), (4000, 2, 1))
  z = np.asarray(rg.mog_sample(jax.random.key(0), logits, means, jnp.zeros((4000, 2, 1)),
                               temperature=0.0))
  assert set(np.unique(z)) == {-5.0, 5.0}
  # 3/4 of the draws from component 1 (binomial sd ~ 0.007).
  assert abs((z > 0).mean() - 0.75) < 0.03


def test_sampler_recovers_a_target_from_an_exact_predictor():
  """A predictor that returns a point mass at the target's collective vector: every step reveals the
  target's codes, under one jit, with the masks only ever shrinking."""
  table = _hypercube_tables(3, 2)
  target = jax.random.randint(jax.random.key(5), (2, 5, 3), 0, 4)
  seen = []

  def predict(tokens, mask, cond):
    del tokens, cond
    seen.append(mask.shape)
    _, coll = rg.split_sums(target, mask, table)
    b, n, e = coll.shape
    return jnp.zeros((b, n, 1)), coll[:, :, None, :], jnp.full((b, n, 1, e), rg.MIN_LOG_SCALE)

  run = jax.jit(lambda rng: sampler.sample(rng, predict, table, batch=2, seq_len=5, steps=4,
                                           temperature=0.0, choice_temperature=2.0))
  out = run(jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(target))
  assert len(seen) == 1  # traced once: the loop is a lax.fori_loop inside the jit
  with pytest.raises(ValueError, match="steps must be <= N Q = 15, got 16"):
    sampler.sample(jax.random.key(0), predict, table, batch=2, seq_len=5, steps=16)


def test_sampler_step_keeps_masks_depthwise_and_shrinking():
  """The sampler's re-masking rule (levels masked, then confidence) gives a subset of the old mask
  with exactly the scheduled count, still a suffix per position."""
  rng = np.random.default_rng(0)
  n, q = 6, 3
  for _ in range(20):
    c1 = int(rng.integers(1, n * q + 1))
    c2 = int(rng.integers(0, c1))
    old = rg.depthwise_mask(jnp.asarray(rng.random((1, n))), jnp.asarray([c1]), q)
    conf = jnp.asarray(rng.random((1, n)))
    low_first = jnp.argsort(jnp.argsort(-conf, axis=1), axis=1)
    new = np.asarray(rg.depthwise_mask(jnp.sum(old, -1) * n + low_first, jnp.asarray([c2]), q))
    old = np.asarray(old)
    assert new.sum() == c2 and not np.any(new & ~old)
    assert not np.any(new[..., :-1] & ~new[..., 1:])


@pytest.fixture(scope="module")
def tiny_model():
  from jaxtok.configs import resgen as config
  c = config.get_config("tiny")
  c.model.update(seq_len=4, codebook_size=8, code_dim=4, num_classes=3)
  # Shapes only, then random values: eager nnx initialisation costs seconds of CPU compile.
  abstract = nnx.eval_shape(lambda: rg.make_model(c.model, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(0)
  state = jax.tree.map(lambda a: jnp.asarray(0.05 * rng.normal(size=a.shape), a.dtype), state)
  return nnx.merge(graphdef, state), c


def test_bad_config_and_codebook_file(tiny_model, tmp_path):
  _, c = tiny_model
  with pytest.raises(ValueError, match="unknown resgen config key"):
    rg.make_model(dict(c.model, depht=2), rngs=nnx.Rngs(0))
  path = str(tmp_path / "cb.npy")
  np.save(path, np.zeros((2, 8, 5), np.float32))
  with pytest.raises(ValueError, match=r"must hold \[num_levels, codebook_size, code_dim\] = \[2, 8, 4\], "
                     r"got \[2, 8, 5\]"):
    rg.make_model(dict(c.model, codebook=path), rngs=nnx.Rngs(0))
