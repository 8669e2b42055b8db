"""TokenFlow's multi-scale residual quantization (`quantizers.multiscale`): torch's resize kernels as
matrices (golden values from torch), the residual recursion by hand, the scale drop, decoding from
indices, gradients, and refusals."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.quantizers import dual
from jaxtok.quantizers import multiscale as ms

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "official" / "resample_golden.npz"
DS, DP, K = 3, 2, 16


def _inputs(g=4, b=2, seed=0):
  r = np.random.default_rng(seed)
  s = jnp.asarray(r.normal(size=(b, g, g, DS)), jnp.float32)
  p = jnp.asarray(r.normal(size=(b, g, g, DP)), jnp.float32)
  cs = jnp.asarray(r.normal(size=(K, DS)), jnp.float32)
  cp = jnp.asarray(r.normal(size=(K, DP)), jnp.float32)
  return s, p, cs, cp


def test_resize_matrices_equal_torch_interpolate():
  golden = np.load(GOLDEN)
  for key in golden.files:
    if key.startswith(("area_", "bicubic_")) and "2d" not in key:
      mode, n_in, n_out = key.split("_")
      fn = ms.area_matrix if mode == "area" else ms.bicubic_matrix
      np.testing.assert_allclose(fn(int(n_in), int(n_out)), golden[key], atol=1e-12, err_msg=key)
  x = np.transpose(golden["bicubic_2d_x"], (0, 2, 3, 1))  # [1, 3, 5, 3] channels-last
  y = ms.resize(jnp.asarray(x), ms.bicubic_matrix(3, 7), ms.bicubic_matrix(5, 4))
  np.testing.assert_allclose(np.transpose(np.asarray(y), (0, 3, 1, 2)), golden["bicubic_2d_y"],
                             atol=1e-6)


def test_resize_matrices_by_hand():
  # area 5 -> 2: cells [0, 3) and [2, 5) (adaptive pooling overlaps at 2).
  np.testing.assert_allclose(ms.area_matrix(5, 2), [[1 / 3, 1 / 3, 1 / 3, 0, 0],
                                                     [0, 0, 1 / 3, 1 / 3, 1 / 3]])
  # bicubic 2 -> 4, output 1: source 0.25 between inputs 0 and 1; a = -0.75 weights at t = 0.25 of
  # the taps -1, 0, 1, 2 are (-0.10546875, 0.87890625, 0.26171875, -0.03515625); taps -1 and 2
  # clamp to inputs 0 and 1.
  np.testing.assert_allclose(ms.bicubic_matrix(2, 4)[1], [-0.10546875 + 0.87890625,
                                                          0.26171875 - 0.03515625])
  np.testing.assert_allclose(ms.bicubic_matrix(1, 5), np.ones((5, 1)))  # one cell: constant
  np.testing.assert_allclose(ms.bicubic_matrix(6, 6), np.eye(6), atol=1e-15)
  np.testing.assert_allclose(ms.area_matrix(6, 6), np.eye(6))


def test_one_scale_is_the_dual_quantizer():
  s, p, cs, cp = _inputs()
  out, ref = jax.jit(lambda *a: (ms.quantize(*a, (4,)), dual.quantize(*a)))(s, p, cs, cp)
  np.testing.assert_array_equal(out.indices, ref.indices.reshape(2, 16))
  np.testing.assert_allclose(out.semantic, ref.semantic, atol=1e-6)
  np.testing.assert_allclose(out.pixel, ref.pixel, atol=1e-6)
  for k in ("codebook", "commitment"):
    np.testing.assert_allclose(out.losses[k], ref.losses[k], rtol=1e-6)


def _by_hand(s, p, cs, cp, scales):
  """The release's loop written out with numpy resizes and the dual quantizer."""
  g = scales[-1]
  r = np.concatenate([np.asarray(s), np.asarray(p)], -1).astype(np.float64)
  total, idx, losses = 0.0, [], []
  quantize = jax.jit(dual.quantize)
  for sc in scales:
    a = ms.area_matrix(g, sc)
    x = np.einsum("oh,bhwc,pw->bopc", a, r, a)
    out = quantize(jnp.asarray(x[..., :DS], jnp.float32), jnp.asarray(x[..., DS:], jnp.float32),
                   cs, cp)
    q = np.concatenate([np.asarray(out.semantic), np.asarray(out.pixel)], -1)
    u = ms.bicubic_matrix(sc, g)
    up = np.einsum("oh,bhwc,pw->bopc", u, q, u)
    total, r = total + up, r - up
    idx.append(np.asarray(out.indices).reshape(s.shape[0], -1))
    losses.append({k: float(v) for k, v in out.losses.items()})
  return total, np.concatenate(idx, 1), {k: np.mean([l[k] for l in losses]) for k in losses[0]}


def test_residual_recursion_matches_the_release_loop_and_decodes_from_indices():
  s, p, cs, cp = _inputs(g=6)
  scales = (1, 2, 3, 6)
  fn = jax.jit(lambda d: ms.quantize(s, p, cs, cp, scales, drop=d))
  out = fn(jnp.int32(-1))
  total, idx, losses = _by_hand(s, p, cs, cp, scales)
  np.testing.assert_array_equal(out.indices, idx)
  assert out.indices.shape == (2, ms.num_tokens(scales)) == (2, 1 + 4 + 9 + 36)
  got = np.concatenate([np.asarray(out.semantic), np.asarray(out.pixel)], -1)
  np.testing.assert_allclose(got, total, atol=1e-5)
  for k in losses:
    np.testing.assert_allclose(out.losses[k], losses[k], rtol=1e-5)
  # Decoding the indices gives the same summed codes (the release's decode_code).
  ds, dp = jax.jit(lambda i: ms.indices_to_grid(i, cs, cp, scales))(out.indices)
  np.testing.assert_allclose(ds, out.semantic, atol=1e-5)
  np.testing.assert_allclose(dp, out.pixel, atol=1e-5)
  # Each token's code is its index's (l2-normalised) codebook rows.
  unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
  t = np.asarray(out.indices)
  np.testing.assert_allclose(out.codes, np.concatenate([unit(np.asarray(cs))[t],
                                                        unit(np.asarray(cp))[t]], -1), atol=1e-6)
  # The finest scale improves on the coarser ones alone (drop 3: scales 1, 2, 3 only).
  target = np.concatenate([np.asarray(s), np.asarray(p)], -1)
  coarse = fn(jnp.int32(3))
  err = lambda o: np.mean((np.concatenate([np.asarray(o.semantic), np.asarray(o.pixel)], -1)
                           - target) ** 2)
  assert err(out) < err(coarse)


def test_dropping_a_scale_equals_running_without_it():
  s, p, cs, cp = _inputs(g=6, seed=1)
  scales = (1, 2, 3, 6)
  fn = jax.jit(lambda d: ms.quantize(s, p, cs, cp, scales, drop=d))
  without = jax.jit(lambda k: ms.quantize(s, p, cs, cp, scales[:k] + scales[k + 1:]),
                    static_argnums=0)
  for k in (1, 2):
    got, ref = fn(jnp.int32(k)), without(k)
    np.testing.assert_allclose(got.semantic, ref.semantic, atol=1e-6)
    np.testing.assert_allclose(got.pixel, ref.pixel, atol=1e-6)
    for name in ("codebook", "commitment"):
      np.testing.assert_allclose(got.losses[name], ref.losses[name], rtol=1e-5)
    assert float(got.metrics["scales_used"]) == 3.0
    offsets = np.cumsum([0] + [x * x for x in scales])
    keep = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in range(4) if i != k])
    np.testing.assert_array_equal(np.asarray(got.indices)[:, keep], ref.indices)
  np.testing.assert_array_equal(fn(jnp.int32(-1)).indices, jax.jit(
      lambda: ms.quantize(s, p, cs, cp, scales))().indices)


def test_drop_index_draws_the_release_distribution():
  draws = np.asarray(jax.vmap(lambda r: ms.drop_index(r, 5, 0.3))(
      jax.random.split(jax.random.key(0), 4000)))
  assert set(np.unique(draws)) <= {-1, 1, 2, 3, 4}
  assert abs(np.mean(draws >= 0) - 0.3) < 0.03
  counts = np.bincount(draws[draws >= 0], minlength=5)[1:]
  assert counts.min() > 0.8 * counts.mean()
  assert int(ms.drop_index(jax.random.key(1), 1, 1.0)) == -1
  assert int(ms.drop_index(jax.random.key(1), 5, 0.0)) == -1
  assert int(ms.drop_index(jax.random.key(1), 5, 1.0)) in (1, 2, 3, 4)
  with pytest.raises(ValueError, match="drop_prob"):
    ms.drop_index(jax.random.key(1), 5, 1.5)


def test_gradients_reach_both_feature_grids_through_every_scale():
  s, p, cs, cp = _inputs(g=4)
  w = jnp.asarray(np.random.default_rng(2).normal(size=(2, 4, 4, DS + DP)), jnp.float32)

  def f(s, p):
    out = ms.quantize(s, p, cs, cp, (1, 2, 4))
    return jnp.sum(jnp.concatenate([out.semantic, out.pixel], -1) * w) + out.losses["commitment"]

  gs, gp = jax.jit(jax.grad(f, argnums=(0, 1)))(s, p)
  for g in (gs, gp):
    assert np.all(np.isfinite(g)) and float(jnp.abs(g).max()) > 0


def test_bad_input_is_refused():
  s, p, cs, cp = _inputs(g=4)
  with pytest.raises(ValueError, match="last scale must equal the feature grid side 4"):
    ms.quantize(s, p, cs, cp, (1, 2))
  with pytest.raises(ValueError, match="strictly increasing"):
    ms.quantize(s, p, cs, cp, (2, 2, 4))
  with pytest.raises(ValueError, match="sequence of ints"):
    ms.check_scales((1, 2.5, 4))
  with pytest.raises(ValueError, match="square feature grid"):
    ms.quantize(s[:, :3], p[:, :3], cs, cp, (1, 4))
  with pytest.raises(ValueError, match=r"indices must be \[B, 21\]"):
    ms.indices_to_grid(jnp.zeros((2, 16), jnp.int32), cs, cp, (1, 2, 4))
