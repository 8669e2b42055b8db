"""Tests of the FID Inception port: layer math against numpy, weight loading, the full forward."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest

from jaxtok.metrics import inception


def _random_state_dict(seed=0):
  rng = np.random.default_rng(seed)
  sd = {}
  for k, shape in inception.expected_shapes().items():
    if k.endswith("conv.weight"):
      fan_in = shape[1] * shape[2] * shape[3]
      sd[k] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    elif k.endswith("running_var"):
      sd[k] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif k.endswith("bn.weight"):
      sd[k] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      sd[k] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
  sd["fc.weight"] = np.zeros((1008, 2048), np.float32)  # extra keys are ignored
  return sd


def test_conv_bn_relu_equals_numpy_for_an_asymmetric_kernel():
  # Mixed_6b.branch7x7_2 is a (1, 7) kernel with padding (0, 3): checks OIHW -> HWIO and padding.
  name = "Mixed_6b.branch7x7_2"
  cin, cout, (kh, kw), stride, (ph, pw) = inception.CONV_SPECS[name]
  rng = np.random.default_rng(1)
  w = rng.standard_normal((cout, cin, kh, kw)).astype(np.float32)
  bn = {p: rng.uniform(0.5, 1.5, cout).astype(np.float32) for p in ("weight", "running_var")}
  bn.update({p: rng.standard_normal(cout).astype(np.float32) for p in ("bias", "running_mean")})
  params = {f"{name}.conv.weight": jnp.asarray(w.transpose(2, 3, 1, 0))}
  params.update({f"{name}.bn.{p}": jnp.asarray(v) for p, v in bn.items()})
  x = rng.standard_normal((1, 3, 9, cin)).astype(np.float32)
  got = np.asarray(inception._conv_bn_relu(params, name, jnp.asarray(x)))
  xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  conv = np.zeros((1, 3, 9, cout))
  for i in range(3):
    for j in range(9):
      patch = xp[0, i:i + kh, j:j + kw, :]  # [kh, kw, cin]
      conv[0, i, j] = np.einsum("hwc,ochw->o", patch, w)
  want = np.maximum((conv - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-3) * bn["weight"]
                    + bn["bias"], 0)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_average_pool_excludes_padding():
  x = jnp.arange(9.0).reshape(1, 3, 3, 1)
  y = inception._avg_pool_exclude_pad(x)[0, :, :, 0]
  assert float(y[0, 0]) == pytest.approx((0 + 1 + 3 + 4) / 4)
  assert float(y[1, 1]) == pytest.approx(4.0)
  assert float(y[0, 1]) == pytest.approx((0 + 1 + 2 + 3 + 4 + 5) / 6)


def test_convert_reports_missing_and_mismatched_keys():
  sd = _random_state_dict()
  del sd["Mixed_7c.branch_pool.conv.weight"]
  sd["Conv2d_1a_3x3.bn.weight"] = np.zeros((31,), np.float32)
  with pytest.raises(ValueError) as e:
    inception.convert_state_dict(sd)
  msg = str(e.value)
  assert "Mixed_7c.branch_pool.conv.weight" in msg and "Conv2d_1a_3x3.bn.weight: expected (32,), got (31,)" in msg
  with pytest.raises(FileNotFoundError, match="never downloads"):
    inception.load_params("/nonexistent/pt_inception.pth")


def test_full_forward_from_an_npz_file(tmp_path):
  sd = _random_state_dict()
  path = tmp_path / "fid_inception.npz"
  np.savez(path, **sd)
  params = inception.load_params(str(path))
  np.testing.assert_array_equal(params["Conv2d_1a_3x3.conv.weight"],
                                sd["Conv2d_1a_3x3.conv.weight"].transpose(2, 3, 1, 0))
  images = jax.random.uniform(jax.random.key(0), (2, 64, 64, 3))
  feats = jax.jit(inception.features)(params, images)
  assert feats.shape == (2, inception.FEATURE_DIM) and feats.dtype == jnp.float32
  assert np.isfinite(np.asarray(feats)).all()
  # Pool3 follows a ReLU, and different images give different features.
  assert float(feats.min()) >= 0 and not np.allclose(feats[0], feats[1])
  with pytest.raises(ValueError, match=r"images must be \[B, H, W, 3\]"):
    inception.features(params, images[..., :1])
