"""TokenFlow's shared-mapping dual quantizer (`quantizers.dual`)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.quantizers import dual


def _unit(a):
  return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _data(seed=0, n=24, k=16, ds=6, dp=3):
  rng = np.random.default_rng(seed)
  f = lambda *s: rng.standard_normal(s).astype(np.float32)
  return f(n, ds), f(n, dp), f(k, ds), f(k, dp)


# One compilation for every weight pair (the weights are traced).
_jit_quantize = jax.jit(lambda s, p, cs, cp, ws, wp: dual.quantize(s, p, cs, cp, semantic_weight=ws,
                                                                   pixel_weight=wp))


@pytest.mark.parametrize("w_sem,w_pix", [(1.0, 1.0), (1.0, 0.0), (0.0, 1.0), (0.3, 2.0)])
def test_index_is_the_argmin_of_the_weighted_distance_sum(w_sem, w_pix):
  s, p, cs, cp = _data()
  out = _jit_quantize(jnp.asarray(s), jnp.asarray(p), jnp.asarray(cs), jnp.asarray(cp), w_sem, w_pix)
  # By hand, on the l2-normalised vectors (float64).
  s64, p64, cs64, cp64 = (_unit(a.astype(np.float64)) for a in (s, p, cs, cp))
  d_sem = ((s64[:, None] - cs64[None])**2).sum(-1)
  d_pix = ((p64[:, None] - cp64[None])**2).sum(-1)
  want = np.argmin(w_sem * d_sem + w_pix * d_pix, axis=-1)
  np.testing.assert_array_equal(out.indices, want)
  # The one index selects both codes: row i* of each (normalised) book.
  np.testing.assert_allclose(out.semantic, cs64[want], atol=1e-6)
  np.testing.assert_allclose(out.pixel, cp64[want], atol=1e-6)
  if (w_sem, w_pix) == (1.0, 0.0):  # only the semantic book decides: its own nearest code
    np.testing.assert_array_equal(out.indices, np.argmin(d_sem, -1))
  # Losses: the official means over the concatenation.
  x = np.concatenate([s64, p64], -1)
  q = np.concatenate([cs64[want], cp64[want]], -1)
  np.testing.assert_allclose(out.losses["codebook"], np.mean((q - x)**2), rtol=1e-5)
  np.testing.assert_allclose(out.losses["commitment"], 0.25 * np.mean((q - x)**2), rtol=1e-5)
  np.testing.assert_allclose(out.metrics["distortion_semantic"], d_sem[np.arange(len(want)), want].mean(),
                             rtol=1e-5)


def test_the_joint_choice_differs_from_either_books_own_choice():
  """Semantic book prefers code 0, pixel book prefers code 1: the weights decide which pair wins."""
  cs = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  cp = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
  s = np.array([[1.0, 0.2]], np.float32)   # near cs[0]
  p = np.array([[1.0, 0.1]], np.float32)   # nearer cp[1]
  pick = lambda ws, wp: int(_jit_quantize(s, p, cs, cp, ws, wp).indices[0])
  assert pick(1.0, 0.0) == 0 and pick(0.0, 1.0) == 1
  d = dual.joint_distances(jnp.asarray(s), jnp.asarray(p), cs, cp)[0]
  assert pick(1.0, 1.0) == int(np.argmin(d[0]))


def test_straight_through_and_codebook_gradients():
  s, p, cs, cp = _data(1)

  def f(s, p, cs, cp):
    out = dual.quantize(s, p, cs, cp)
    return jnp.sum(out.semantic * 2.0) + jnp.sum(out.pixel), out.losses["codebook"]

  (gs, gp) = jax.jit(jax.grad(lambda s, p: f(s, p, cs, cp)[0], argnums=(0, 1)))(s, p)
  # d/ds of sum(2 * normalize(s)) through the straight-through: the normaliser's Jacobian.
  want = jax.grad(lambda s: jnp.sum(2.0 * s / jnp.linalg.norm(s, axis=-1, keepdims=True)))(s)
  np.testing.assert_allclose(gs, want, atol=1e-5)
  assert np.abs(np.asarray(gp)).sum() > 0
  gcs, gcp = jax.jit(jax.grad(lambda cs, cp: f(s, p, cs, cp)[1], argnums=(0, 1)))(cs, cp)
  assert np.abs(np.asarray(gcs)).sum() > 0 and np.abs(np.asarray(gcp)).sum() > 0


def test_indices_to_codes_round_trip_and_jit():
  s, p, cs, cp = _data(2)
  out = jax.jit(dual.quantize)(s.reshape(2, 12, -1), p.reshape(2, 12, -1), cs, cp)
  assert out.indices.shape == (2, 12) and out.indices.dtype == jnp.int32
  qs, qp = dual.indices_to_codes(out.indices, cs, cp)
  np.testing.assert_allclose(qs, out.semantic, atol=1e-6)
  np.testing.assert_allclose(qp, out.pixel, atol=1e-6)


def test_bad_inputs_name_the_argument():
  s, p, cs, cp = _data()
  with pytest.raises(ValueError, match="same K"):
    dual.quantize(s, p, cs, cp[:3])
  with pytest.raises(ValueError, match="leading shape"):
    dual.quantize(s, p[:5], cs, cp)
  with pytest.raises(ValueError, match="pixel must have last dimension 3"):
    dual.quantize(s, p[:, :2], cs, cp)
  with pytest.raises(ValueError, match="semantic_weight must be >= 0, got -1"):
    dual.quantize(s, p, cs, cp, semantic_weight=-1.0)
  with pytest.raises(ValueError, match="indices"):
    dual.indices_to_codes(np.array([16]), cs, cp)
  with pytest.raises(TypeError, match="indices must have an integer dtype"):
    dual.indices_to_codes(np.array([1.0]), cs, cp)
