"""xAR's 2D RoPE: the grid positions of each entity kind by hand, attention scores that depend only
on the 2D offset of two tokens, the KV-cached entity call equal to the whole-sequence velocity for
kinds whose positions are not in sequence order, and the option's checks (same parameters with and
without RoPE)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.generators import entities, xar

# Every kind's sampling through the cache is tested in tests/samplers/test_next_x_cache.py (RoPE on,
# the default); here the two kinds whose positions are not the sequence order's.
KINDS = [("subsample", 2, 16), ("scale", 0, 8)]


def _model(kind="cell", k=2, rope="2d", seq_len=16, grid_width=4, seed=0):
  """A 1-layer xAR (width 16, 2 heads of 8) with every parameter randomised (a fresh AdaLN-zero
  block is the identity, which would hide the attention)."""
  m = xar.XAR(token_dim=2, seq_len=seq_len, grid_width=grid_width, entity=kind, entity_size=k,
              num_classes=3, width=16, depth=1, heads=2, rope=rope, rngs=nnx.Rngs(seed))
  state = nnx.state(m, nnx.Param)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  nnx.update(m, jax.tree.unflatten(tree, [a + 0.3 * jax.random.normal(r, a.shape)
                                          for a, r in zip(leaves, keys)]))
  return m


def test_positions_of_each_kind_by_hand():
  # 2 x 4 grid, 2 x 2 cells: cell 0 holds raster 0, 1, 4, 5 and cell 1 holds 2, 3, 6, 7.
  cell = entities.Layout("cell", 2, 4, 2).positions
  np.testing.assert_array_equal(cell, [[0, 0], [0, 1], [1, 0], [1, 1],
                                       [0, 2], [0, 3], [1, 2], [1, 3]])
  # stride 2: entity (a, b) = tokens (a + 2 i, b + 2 j)
  sub = entities.Layout("subsample", 2, 4, 2).positions
  np.testing.assert_array_equal(sub, [[0, 0], [0, 2], [0, 1], [0, 3],
                                      [1, 0], [1, 2], [1, 1], [1, 3]])
  np.testing.assert_array_equal(entities.Layout("token", 2, 4).positions,
                                entities.Layout("image", 2, 4).positions)
  # scale on 4 x 4, 3 scales: the 4x4 mean at the grid's centre, the 2x2 means at their block
  # centres, then the grid itself.
  scale = entities.Layout("scale", 4, 4, 3).positions
  assert scale.shape == (1 + 4 + 16, 2) and scale.dtype == np.float32
  np.testing.assert_array_equal(scale[:5], [[1.5, 1.5], [0.5, 0.5], [0.5, 2.5], [2.5, 0.5],
                                            [2.5, 2.5]])
  np.testing.assert_array_equal(scale[5:], np.stack(np.divmod(np.arange(16), 4), -1))


def _scores(model, h):
  """Head 0's attention scores [T, T] of the first block for block inputs h [1, T, W]."""
  attn = model.blocks.blocks[0].attn
  q, k, _ = attn.project(h, jnp.asarray(model.rope_positions))
  return np.asarray(jnp.einsum("te,se->ts", q[0, :, 0], k[0, :, 0]))


def test_scores_depend_only_on_the_2d_offset():
  """One input vector at every position: with 2D RoPE, q_p . k_r is a function of pos_r - pos_p
  (the grid offset), the same for every pair with that offset, whatever their sequence slots; the
  rotation angle of frequency 0 is the offset itself, so the offsets (0, 1) and (1, 0) differ."""
  m = _model("subsample", 2)  # sequence slots far from raster order
  h = jnp.broadcast_to(jax.random.normal(jax.random.key(5), (16,)), (1, 16, 16))
  s = _scores(m, h)
  pos = m.rope_positions
  offsets = {}
  for p in range(16):
    for r in range(16):
      offsets.setdefault(tuple(pos[r] - pos[p]), []).append(s[p, r])
  assert len(offsets) == 7 * 7  # every offset in [-3, 3]^2 of a 4 x 4 grid
  for off, vals in offsets.items():
    np.testing.assert_allclose(vals, vals[0], atol=1e-5, err_msg=str(off))
  assert abs(offsets[(0, 1)][0] - offsets[(1, 0)][0]) > 1e-3
  assert abs(offsets[(0, 0)][0] - offsets[(0, 1)][0]) > 1e-3
  # Without RoPE the same projection is position-free: every score equal.
  flat = _scores(_model("subsample", 2, rope="none"), h)
  np.testing.assert_allclose(flat, flat[0, 0], atol=1e-5)


def test_score_by_hand_for_a_unit_query_and_key():
  """E = 8 (two halves of 4 channels, frequencies 1 and 1/100 each): q = k = e_0 at grid offset
  (dr, dc) score cos(dr) (channel 0 rotates with the row at frequency 1); q = k = e_4 (the first
  column channel) score cos(dc)."""
  from jaxtok.nn import rope  # pylint: disable=g-import-not-at-top
  m = _model("cell", 2)
  pos = jnp.asarray(m.rope_positions)
  for channel, axis in ((0, 0), (4, 1)):
    unit = jnp.zeros((1, 16, 1, 8)).at[..., channel].set(1.0)
    rot = rope.rope_2d(unit, pos, m.blocks.blocks[0].attn.rope_theta)
    got = np.asarray(jnp.einsum("te,se->ts", rot[0, :, 0], rot[0, :, 0]))
    want = np.cos(np.asarray(pos)[None, :, axis] - np.asarray(pos)[:, None, axis])
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("kind,k,n", KINDS)
def test_extend_equals_velocity_with_rope(kind, k, n):
  """Entity by entity: the clean context written by `extend` at t = 0, then the entity's own call
  against the cache equals `velocity` on the whole sequence at its positions (context t = 0)."""
  m = _model(kind, k, seq_len=n)  # scale: a 2 x 4 grid, entities of 2 and 8 tokens
  graphdef, state = nnx.split(m)
  ids = m.entity_ids
  b = 2
  x = jax.random.normal(jax.random.key(2), (b, m.layout.length, 2))
  labels = jnp.array([1, -1])
  velocity = jax.jit(lambda s, t: nnx.merge(graphdef, s).velocity(x, t, labels))
  extend = jax.jit(lambda s, x, t, start, cache: nnx.merge(graphdef, s).extend(
      x, t, start, cache, labels))
  cache, got, want = m.init_cache(b), [], []
  for e in range(int(ids[-1]) + 1):
    start, size = int(np.argmax(ids == e)), int((ids == e).sum())
    t = jnp.where(jnp.asarray(ids) < e, 0.0, 0.7)[None].repeat(b, 0)
    want.append(velocity(state, t)[:, start:start + size])
    piece = x[:, start:start + size]
    got.append(extend(state, piece, t[:, start:start + size], start, cache)[0])
    cache = extend(state, piece, jnp.zeros((b, size)), start, cache)[1]
  got, want = jnp.concatenate(got, 1), jnp.concatenate(want, 1)
  assert float(jnp.abs(want).max()) > 0.1
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_rope_changes_numerics_not_parameters_and_option_checks():
  with_rope, without = _model("cell", 2), _model("cell", 2, rope="none")
  shapes = lambda mod: jax.tree.map(jnp.shape, nnx.state(mod, nnx.Param))
  assert shapes(with_rope) == shapes(without)
  nnx.update(without, nnx.state(with_rope, nnx.Param))  # an old checkpoint loads unchanged
  x = jax.random.normal(jax.random.key(0), (1, 16, 2))
  t = jnp.full((1, 16), 0.5)
  assert float(jnp.abs(with_rope.velocity(x, t) - without.velocity(x, t)).max()) > 1e-3
  cfg = dict(name="xar", token_dim=2, seq_len=16, width=16, depth=1, heads=2)
  assert xar.make_model(dict(cfg, rope="none"), rngs=nnx.Rngs(0)).rope == "none"
  # No `rope` key (a config stored before the option existed): the pre-RoPE model it trained.
  assert xar.make_model(cfg, rngs=nnx.Rngs(0)).rope == "none"
  assert xar.make_model(dict(cfg, rope="2d"), rngs=nnx.Rngs(0)).rope == "2d"
  with pytest.raises(ValueError, match="rope must be one of .*'2d'.*'none'.*got '1d'"):
    xar.make_model(dict(cfg, rope="1d"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="divisible by 4, got width=24, heads=4"):
    xar.make_model(dict(cfg, width=24, heads=4, rope="2d"), rngs=nnx.Rngs(0))
