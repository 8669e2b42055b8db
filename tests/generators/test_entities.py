"""Tests of xAR's entity layouts: partitions (by hand on a 4 x 4 grid, then invariants), scales,
the block-causal and teacher-forcing masks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.generators import entities


def test_groups_of_a_4x4_grid_by_hand():
  np.testing.assert_array_equal(entities.groups("token", 4, 4), np.arange(16)[:, None])
  np.testing.assert_array_equal(entities.groups("image", 4, 4), np.arange(16)[None])
  np.testing.assert_array_equal(entities.groups("cell", 4, 4, 2),
                                [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]])
  np.testing.assert_array_equal(entities.groups("subsample", 4, 4, 2),
                                [[0, 2, 8, 10], [1, 3, 9, 11], [4, 6, 12, 14], [5, 7, 13, 15]])
  np.testing.assert_array_equal(entities.groups("cell", 4, 4, 4), np.arange(16)[None])
  np.testing.assert_array_equal(entities.groups("subsample", 4, 4, 4), np.arange(16)[:, None])


@pytest.mark.parametrize("kind,k", [("token", 1), ("cell", 2), ("cell", 3), ("subsample", 2),
                                    ("subsample", 3), ("image", 1)])
@pytest.mark.parametrize("h,w", [(6, 6), (6, 12), (12, 6), (1, 1)])
def test_every_partition_kind_covers_each_token_exactly_once(kind, k, h, w):
  if h % k or w % k:
    with pytest.raises(ValueError, match="entity_size k >= 1 dividing both grid sides"):
      entities.Layout(kind, h, w, k)
    return
  layout = entities.Layout(kind, h, w, k)
  g = entities.groups(kind, h, w, k)
  np.testing.assert_array_equal(np.sort(g.ravel()), np.arange(h * w))  # each token exactly once
  assert layout.length == h * w and sum(layout.sizes) == h * w and g.shape[0] == layout.num_entities
  np.testing.assert_array_equal(layout.ids, np.repeat(np.arange(g.shape[0]), g.shape[1]))
  x = np.random.default_rng(0).normal(size=(2, h * w, 3)).astype(np.float32)
  seq = layout.to_sequence(jnp.asarray(x))
  np.testing.assert_array_equal(seq, x[:, g.ravel()])
  np.testing.assert_array_equal(layout.from_sequence(seq), x)  # exact round trip


def test_cells_are_neighbours_and_subsamples_are_strided():
  # 6 x 6, k = 3: every cell spans 3 consecutive rows and columns; every subsample keeps i, j mod 3.
  for cell in entities.groups("cell", 6, 6, 3):
    i, j = np.divmod(cell, 6)
    assert np.ptp(i) == 2 and np.ptp(j) == 2
  for a_b, sub in enumerate(entities.groups("subsample", 6, 6, 3)):
    i, j = np.divmod(sub, 6)
    assert set(i % 3) == {a_b // 3} and set(j % 3) == {a_b % 3}


def test_scales_by_hand_on_4x4():
  layout = entities.Layout("scale", 4, 4, 0)
  assert layout.factors == (4, 2, 1) and layout.sizes == (1, 4, 16) and layout.length == 21
  np.testing.assert_array_equal(layout.ids, [0] + [1] * 4 + [2] * 16)
  x = np.arange(16, dtype=np.float32).reshape(1, 16, 1)
  seq = np.asarray(layout.to_sequence(jnp.asarray(x)))[0, :, 0]
  assert seq[0] == 7.5  # mean of 0..15
  np.testing.assert_allclose(seq[1:5], [2.5, 4.5, 10.5, 12.5])  # (0+1+4+5)/4, (2+3+6+7)/4, ...
  np.testing.assert_array_equal(seq[5:], np.arange(16))  # the finest scale is the grid
  np.testing.assert_array_equal(layout.from_sequence(jnp.asarray(seq)[None, :, None]), x)
  assert entities.Layout("scale", 4, 4, 2).factors == (2, 1)
  assert entities.scale_factors(2, 4) == (2, 1) and entities.scale_factors(3, 4) == (1,)
  # Every coarser scale is the pooled finer one (pooling composes).
  y = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  np.testing.assert_allclose(entities.avg_pool(entities.avg_pool(y, 2), 2), entities.avg_pool(y, 4),
                             atol=1e-6)
  with pytest.raises(ValueError, match=r"allows 1..3 scales .* got entity_size=4"):
    entities.Layout("scale", 4, 4, 4)


def test_block_causal_mask_by_hand():
  m = entities.block_causal_mask(np.array([0, 0, 1, 1, 2]))
  want = np.array([[1, 1, 0, 0, 0],
                   [1, 1, 0, 0, 0],
                   [1, 1, 1, 1, 0],
                   [1, 1, 1, 1, 0],
                   [1, 1, 1, 1, 1]], bool)
  np.testing.assert_array_equal(m, want)
  # Entity "token": the ordinary causal mask.
  np.testing.assert_array_equal(entities.block_causal_mask(np.arange(4)),
                                np.tril(np.ones((4, 4), bool)))


def test_teacher_forcing_mask_by_hand():
  m = entities.teacher_forcing_mask(np.array([0, 1, 1]))
  #            clean c0 c1 c2 | noisy n0 n1 n2
  want = np.array([[1, 0, 0, 0, 0, 0],
                   [1, 1, 1, 0, 0, 0],
                   [1, 1, 1, 0, 0, 0],
                   [0, 0, 0, 1, 0, 0],   # n0: nothing clean, only itself
                   [1, 0, 0, 0, 1, 1],   # n1, n2: clean entity 0 and noisy entity 1
                   [1, 0, 0, 0, 1, 1]], bool)
  np.testing.assert_array_equal(m, want)


def test_bad_layouts():
  with pytest.raises(ValueError, match="entity must be one of"):
    entities.Layout("patch", 4, 4)
  with pytest.raises(ValueError, match=r"tokens must be \[B, 16, D\]"):
    entities.Layout("cell", 4, 4, 2).to_sequence(jnp.zeros((1, 8, 2)))
  with pytest.raises(ValueError, match="not a partition"):
    entities.groups("scale", 4, 4)
