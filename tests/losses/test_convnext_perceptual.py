"""The release's ConvNeXt perceptual term: parity with torchvision's ConvNeXt and 1d-tokenizer's
preprocessing on a tiny official fixture, the combined LPIPS + ConvNeXt average, config and file
refusals, and the term inside a jitted training step."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxtok.losses import convnext_perceptual as cp
from jaxtok.losses import perceptual
from tests.losses.test_perceptual import tiny_lpips_state_dict, write

FIX = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "official"
SIZE = 32  # the fixture's resize target (the release uses 224)


@pytest.fixture(scope="module")
def fixture():
  weights = cp.load_convnext(FIX / "convnext_tiny.safetensors")
  return weights, dict(np.load(FIX / "convnext_tiny_outputs.npz"))


def _images(ref, k):
  return jnp.asarray(ref[k], jnp.float32) / 255.0


def _normalise(x):
  return (x - jnp.asarray(cp.IMAGENET_MEAN)) / jnp.asarray(cp.IMAGENET_STD)


def test_resize_matches_torch_antialiased_bilinear(fixture):
  _, ref = fixture
  for k in ("x", "u"):  # 40 -> 32 (antialias filter widened) and 24 -> 32 (plain bilinear)
    got = cp.resize_antialias(_images(ref, k), SIZE)
    np.testing.assert_allclose(got, ref[f"resized_{k}"], atol=2e-6)


def test_features_and_logits_match_torchvision(fixture):
  weights, ref = fixture
  x = _normalise(cp.resize_antialias(_images(ref, "x"), SIZE))
  feats = cp.convnext_features(weights, x)
  assert [f.shape for f in feats] == [ref[f"stage_{i}"].shape for i in range(4)]
  for i, f in enumerate(feats):
    scale = float(np.abs(ref[f"stage_{i}"]).max())
    np.testing.assert_allclose(f, ref[f"stage_{i}"], atol=1e-5 * max(scale, 1.0))
  for k in ("x", "y", "u"):
    logits = jax.jit(cp.convnext_logits)(weights, _normalise(cp.resize_antialias(_images(ref, k), SIZE)))
    scale = float(np.abs(ref[f"logits_{k}"]).max())
    np.testing.assert_allclose(logits, ref[f"logits_{k}"], atol=1e-5 * max(scale, 1.0))


def test_distance_is_the_release_mse_and_vanishes_with_zero_gradient_at_equality(fixture):
  weights, ref = fixture
  x, y = _images(ref, "x"), _images(ref, "y")
  d = cp.convnext_distance(weights, x, y, size=SIZE)
  np.testing.assert_allclose(d, ref["mse_xy"], rtol=1e-5)
  assert float(d) > 0.0
  fn = jax.jit(jax.value_and_grad(lambda a, b: cp.convnext_distance(weights, a, b, size=SIZE)))
  value, grad = fn(x, x)
  assert float(value) == 0.0
  assert np.all(np.asarray(grad) == 0.0)
  value, grad = fn(y, x)
  np.testing.assert_allclose(value, ref["mse_xy"], rtol=1e-5)  # symmetric
  assert np.all(np.isfinite(grad)) and float(jnp.abs(grad).max()) > 0.0


def test_combined_loss_is_the_weighted_average_of_lpips_and_convnext(fixture, tmp_path):
  weights, ref = fixture
  x, y = _images(ref, "x"), _images(ref, "y")
  lpips = perceptual.load_lpips_vgg16(write(tmp_path, tiny_lpips_state_dict()))
  both = {"lpips": lpips, "convnext": weights}
  l_part = float(perceptual.lpips_loss(lpips, x, y))
  c_part = float(cp.convnext_distance(weights, x, y, size=SIZE))
  got = cp.combined_loss(both, x, y, lpips_weight=1.0, convnext_weight=0.1, size=SIZE)
  np.testing.assert_allclose(got, (1.0 * l_part + 0.1 * c_part) / 1.1, rtol=1e-5)
  only = cp.combined_loss({"convnext": weights}, x, y, lpips_weight=0.0, convnext_weight=1.0, size=SIZE)
  np.testing.assert_allclose(only, c_part, rtol=1e-6)


def test_names_and_from_config(tmp_path):
  assert cp.parse_net("lpips_vgg16") == (1.0, 0.0)
  assert cp.parse_net("convnext_s") == (0.0, 1.0)
  assert cp.parse_net("lpips-convnext_s-1.0-0.1") == (1.0, 0.1)
  for bad in ("convnext_b", "lpips-convnext_s-1.0", "lpips-convnext_s-0-0", "lpips-convnext_s-a-b"):
    with pytest.raises(ValueError, match="perceptual_net must be one of"):
      cp.parse_net(bad)
  lp = write(tmp_path, tiny_lpips_state_dict())
  cx = str(FIX / "convnext_tiny.safetensors")
  with pytest.raises(ValueError, match="convnext_weights"):
    perceptual.from_config({"perceptual_net": "convnext_s"})
  with pytest.raises(ValueError, match="perceptual_weights"):
    perceptual.from_config({"perceptual_net": "lpips-convnext_s-1.0-0.1", "convnext_weights": cx})
  fn, w = perceptual.from_config({"perceptual_net": "lpips-convnext_s-1.0-0.1",
                                  "perceptual_weights": lp, "convnext_weights": cx})
  assert set(w) == {"lpips", "convnext"}
  fn, w = perceptual.from_config({"perceptual_net": "convnext_s", "convnext_weights": cx})
  assert set(w) == {"convnext"}
  # As the trainer holds it: replicated over the mesh, passed into the jitted step as a pytree.
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  w = jax.device_put(w, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
  assert float(jax.jit(fn)(w, x, x)) == 0.0  # the release's 224 resize, then the same logits
  assert float(jax.jit(fn)(w, x, 1.0 - x)) > 0.0


def test_loader_and_inputs_refuse_clearly(fixture, tmp_path):
  weights, _ = fixture
  sd = load_file(str(FIX / "convnext_tiny.safetensors"))
  missing = {k: v for k, v in sd.items() if k != "classifier.2.bias"}
  with pytest.raises(ValueError, match="missing key 'classifier.2.bias'"):
    cp.convnext_weights(missing)
  with pytest.raises(ValueError, match="unexpected key 'head.fc.weight'"):
    cp.convnext_weights({**sd, "head.fc.weight": np.zeros((2, 2), np.float32)})
  prefixed = {f"convnext.{k}": v for k, v in sd.items()}  # 1d-tokenizer's PerceptualLoss module
  path = str(tmp_path / "p.safetensors")
  save_file(prefixed, path)
  got = cp.load_convnext(path)
  np.testing.assert_array_equal(got.head[3], weights.head[3])
  with pytest.raises(ValueError, match="untrained"):
    cp.convnext_logits({"not": "weights"}, jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match=r"x must be images \[B, H, W, 3\]"):
    cp.convnext_distance(weights, jnp.zeros((2, 32, 32)), jnp.zeros((2, 32, 32)))
  with pytest.raises(ValueError, match="same shape"):
    cp.convnext_distance(weights, jnp.zeros((2, 32, 32, 3)), jnp.zeros((1, 32, 32, 3)))
