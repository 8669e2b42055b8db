"""NAR's 2D RoPE: the positions by hand, attention scores that depend only on the grid offset, the
diagonal (KV-cached) sampler equal to a full recompute on a non-square grid, and the option's checks
(same parameters as 1D, different numerics)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.configs import nar_vqgan
from jaxtok.generators import nar as nar_lib
from jaxtok.samplers import neighbor

CFG = dict(codebook_size=11, seq_len=12, grid_width=4, num_classes=3, width=16, depth=1, heads=2)


def _model(**kw):
  return nar_lib.NAR(**{**CFG, "rope": "2d", **kw}, rngs=nnx.Rngs(0))


def test_positions_by_hand():
  m = _model(seq_len=6, grid_width=3)  # 2 x 3 grid
  cells = np.array([-1, 0, 1, 2, 3, 4, 5])  # the condition, then raster order
  np.testing.assert_array_equal(m.positions(cells),
                                [[0, 0], [0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]])
  np.testing.assert_array_equal(_model(seq_len=6, grid_width=3, rope="1d").positions(cells),
                                [0, 1, 2, 3, 4, 5, 6])  # the former sequence positions


def test_scores_depend_only_on_the_grid_offset():
  """One input vector at every slot: head 0's first-layer scores q_p . k_r over [cond, 3 x 4 grid]
  are equal for every pair with one 2D offset; 1D RoPE instead makes (0, 3) -> (1, 0) (raster
  offset 1, grid offset (1, -3)) score like the neighbours (0, 0) -> (0, 1)."""
  for rope in ("2d", "1d"):
    m = _model(rope=rope)
    attn = m.net.blocks.blocks[0].attn
    h = jnp.broadcast_to(jax.random.normal(jax.random.key(4), (16,)), (1, 13, 16))
    q, k, _ = attn.project(h, m.positions(np.arange(-1, 12)))
    s = np.asarray(jnp.einsum("te,se->ts", q[0, :, 0], k[0, :, 0]))
    if rope == "1d":
      np.testing.assert_allclose(s[1 + 3, 1 + 4], s[1 + 0, 1 + 1], atol=1e-5)
      continue
    grid = np.concatenate([[[0, 0]], np.stack(np.divmod(np.arange(12), 4), -1)])
    by_offset = {}
    for p in range(13):
      for r in range(13):
        by_offset.setdefault(tuple(grid[r] - grid[p]), []).append(s[p, r])
    for off, vals in by_offset.items():
      np.testing.assert_allclose(vals, vals[0], atol=1e-5, err_msg=str(off))
    assert abs(s[1 + 3, 1 + 4] - s[1 + 0, 1 + 1]) > 1e-3


def test_diagonal_sampler_equals_full_recompute_with_2d_rope():
  """Guided, top-k: the cached diagonal-major sampler (each step's queries rotated at their grid
  positions, keys written at theirs) draws exactly the tokens of the cache-free recompute of the
  teacher-forced model, in h + w - 1 = 6 calls for 12 tokens."""
  model = _model()
  graphdef, state = nnx.split(model)
  labels = jnp.array([1, 2])
  prompt = model.condition_ids(labels, 2)[:, None]
  uncond = jnp.full_like(prompt, model.null_id)
  calls = []

  @jax.jit
  def cached(state, rng):
    m = nnx.merge(graphdef, state)

    def counted(fn):
      def run(*args):
        jax.debug.callback(lambda: calls.append(1))
        return fn(*args)
      return run
    return neighbor.sample(rng, counted(m.prefill), counted(m.step), m.init_cache(4), prompt,
                           diagonals=m.diag, top_k=6, uncond_prompt_tokens=uncond, cfg_scale=2.0)

  rng = jax.random.key(3)
  got = jax.block_until_ready(cached(state, rng))
  assert len(calls) == 3 + 4 - 1
  both = jnp.concatenate([labels, -jnp.ones_like(labels)])
  want = jax.jit(lambda state, rng: neighbor.sample_recompute(
      rng, lambda p, t: nnx.merge(graphdef, state)(t, both), prompt, diagonals=model.diag,
      top_k=6, uncond_prompt_tokens=uncond, cfg_scale=2.0))(state, rng)
  np.testing.assert_array_equal(got, want)


def test_same_parameters_as_1d_different_logits_and_option_checks():
  two, one = _model(), _model(rope="1d")
  shapes = lambda mod: jax.tree.map(jnp.shape, nnx.state(mod, nnx.Param))
  assert shapes(two) == shapes(one)
  nnx.update(one, nnx.state(two, nnx.Param))
  tokens = jax.random.randint(jax.random.key(0), (1, 12), 0, 11)
  assert float(jnp.abs(two(tokens) - one(tokens)).max()) > 1e-4
  assert nar_vqgan.get_config("tiny").model.rope == "2d"
  cfg = dict(name="nar", **CFG)
  assert nar_lib.make_model(dict(cfg, rope="1d"), rngs=nnx.Rngs(0)).rope == "1d"
  with pytest.raises(ValueError, match="rope must be one of \\('1d', '2d'\\), got '3d'"):
    nar_lib.make_model(dict(cfg, rope="3d"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="divisible by 4, got width=24, heads=4"):
    nar_lib.make_model(dict(cfg, width=24, heads=4, rope="2d"), rngs=nnx.Rngs(0))
