"""Perceptual loss: hand values of the distance, LPIPS-VGG16 layout from a tiny weights file, refusals."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxtok.losses import perceptual

WIDTHS = {0: 4, 2: 4, 5: 6, 7: 6, 10: 8, 12: 8, 14: 8, 17: 8, 19: 8, 21: 8, 24: 8, 26: 8, 28: 8}


def tiny_lpips_state_dict(seed=0, layout="torchvision"):
  """A narrow network in the LPIPS-VGG16 layout: torch OIHW convs + [1, C, 1, 1] linear layers."""
  rng = np.random.default_rng(seed)
  sd, cin = {}, 3
  for k, slice_ in enumerate(perceptual.VGG16_SLICES):
    for i in slice_:
      cout = WIDTHS[i]
      name = f"features.{i}" if layout == "torchvision" else f"net.slice{k + 1}.{i}"
      sd[f"{name}.weight"] = (rng.normal(size=(cout, cin, 3, 3)) / np.sqrt(9 * cin)).astype(np.float32)
      sd[f"{name}.bias"] = (0.1 * rng.normal(size=(cout,))).astype(np.float32)
      cin = cout
    sd[f"lin{k}.model.1.weight"] = rng.random((1, cin, 1, 1)).astype(np.float32)
  return sd


def write(tmp_path, sd, name="w.safetensors"):
  path = str(tmp_path / name)
  save_file(sd, path)
  return path


def reference_lpips(sd, x, y):
  """Straight from the torch layout (NCHW, OIHW), independent of the loader's transposes."""
  def feats(im):
    h = jnp.transpose(im * 2 - 1, (0, 3, 1, 2))
    h = (h - jnp.array(perceptual.LPIPS_SHIFT)[:, None, None]) / jnp.array(perceptual.LPIPS_SCALE)[:, None, None]
    out = []
    for k, slice_ in enumerate(perceptual.VGG16_SLICES):
      if k:
        h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
      for i in slice_:
        w = sd[f"features.{i}.weight"]
        h = jax.lax.conv_general_dilated(h, w, (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        h = jax.nn.relu(h + sd[f"features.{i}.bias"][None, :, None, None])
      out.append(h)
    return out
  total = 0.0
  for k, (a, b) in enumerate(zip(feats(x), feats(y))):
    na = a / (jnp.sqrt(jnp.sum(a**2, axis=1, keepdims=True)) + 1e-10)
    nb = b / (jnp.sqrt(jnp.sum(b**2, axis=1, keepdims=True)) + 1e-10)
    d = jnp.sum((na - nb) ** 2 * sd[f"lin{k}.model.1.weight"].reshape(1, -1, 1, 1), axis=1)
    total = total + jnp.mean(d, axis=(1, 2))
  return total


def test_distance_formula_by_hand():
  np.testing.assert_allclose(perceptual.normalize_channels(jnp.array([3.0, 4.0])), [0.6, 0.8], rtol=1e-6)
  fx = jnp.array([[[[3.0, 4.0], [1.0, 0.0]]]])   # [1, 1, 2, 2]: two positions, two channels
  fy = jnp.array([[[[4.0, 3.0], [2.0, 0.0]]]])
  # position 0: n = (.6, .8) vs (.8, .6): squared differences (.04, .04); position 1: identical.
  np.testing.assert_allclose(perceptual.layer_distance(fx, fy), [(0.08 + 0) / 2], rtol=1e-5)
  np.testing.assert_allclose(perceptual.layer_distance(fx, fy, jnp.array([1.0, 2.0])), [(0.12 + 0) / 2],
                             rtol=1e-5)
  # Two layers (the image and its negation): sum over layers; the loss is the batch mean.
  x = jnp.array([[[[3.0, 4.0]]], [[[1.0, 1.0]]]])
  y = jnp.array([[[[4.0, 3.0]]], [[[1.0, 1.0]]]])
  fn = lambda im: [im, -2.0 * im]
  np.testing.assert_allclose(perceptual.perceptual_distance(fn, x, y), [0.16, 0.0], atol=1e-6)
  np.testing.assert_allclose(perceptual.perceptual_loss(fn, x, y, [None, jnp.array([0.5, 0.5])]),
                             (0.08 + 0.04) / 2, rtol=1e-5)
  with pytest.raises(ValueError, match="one entry per feature layer"):
    perceptual.perceptual_distance(fn, x, y, [None])
  with pytest.raises(ValueError, match=r"layer weight must have shape \(2,\)"):
    perceptual.layer_distance(fx, fy, jnp.ones(3))


def test_lpips_tiny_network_matches_torch_layout_reference(tmp_path):
  sd = tiny_lpips_state_dict()
  weights = perceptual.load_lpips_vgg16(write(tmp_path, sd))
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.random((2, 16, 16, 3)), jnp.float32)
  y = jnp.asarray(rng.random((2, 16, 16, 3)), jnp.float32)
  # One compiled call: d(x, y), d(x, x), d(y, x) as a batch of 6.
  lpips = jax.jit(perceptual.lpips_vgg16)
  d_all = lpips(weights, jnp.concatenate([x, x, y]), jnp.concatenate([y, x, x]))
  d = d_all[:2]
  np.testing.assert_allclose(d, jax.jit(reference_lpips)(sd, x, y), rtol=2e-4, atol=1e-6)
  assert d.shape == (2,) and float(d.min()) > 0
  np.testing.assert_allclose(d_all[2:4], 0.0, atol=1e-6)
  np.testing.assert_allclose(d_all[4:], d, rtol=1e-5)
  shapes = jax.eval_shape(perceptual.lpips_vgg16_features, weights, x)
  assert [f.shape[1:] for f in shapes] == [(16, 16, 4), (8, 8, 6), (4, 4, 8), (2, 2, 8), (1, 1, 8)]
  # The lpips-module layout split over two files (backbone + linear layers) loads the same weights.
  lp = tiny_lpips_state_dict(layout="lpips")
  net = {k: v for k, v in lp.items() if k.startswith("net.")}
  lins = {k: v for k, v in lp.items() if k.startswith("lin")}
  both = perceptual.load_lpips_vgg16([write(tmp_path, net, "net.safetensors"),
                                      write(tmp_path, lins, "lin.safetensors")])
  jax.tree.map(np.testing.assert_array_equal, both.convs, weights.convs)
  jax.tree.map(np.testing.assert_array_equal, both.lins, weights.lins)
  # Gradients flow to the images (the loss used in training).
  g = jax.jit(jax.grad(lambda im: perceptual.lpips_loss(weights, x, im)))(y)
  assert g.shape == y.shape and float(jnp.abs(g).max()) > 0


def test_refuses_without_loaded_weights(tmp_path):
  x = jnp.zeros((1, 16, 16, 3))
  with pytest.raises(ValueError, match="trained weights"):
    perceptual.lpips_vgg16(None, x, x)
  with pytest.raises(ValueError, match="trained weights"):
    perceptual.lpips_vgg16({"convs": []}, x, x)
  with pytest.raises(ValueError, match="perceptual_weights"):
    perceptual.from_config({"perceptual": 1.0})
  with pytest.raises(ValueError, match="not found"):
    perceptual.from_config({"perceptual_weights": str(tmp_path / "missing.safetensors")})
  fn, w = perceptual.from_config({"perceptual_weights": write(tmp_path, tiny_lpips_state_dict())})
  assert fn is perceptual.lpips_loss and isinstance(w, perceptual.LPIPSWeights)
  with pytest.raises(ValueError, match="perceptual_net must be one of"):
    perceptual.from_config({"perceptual_net": "alex", "perceptual_weights": "x"})


def test_key_and_shape_errors(tmp_path):
  sd = tiny_lpips_state_dict()
  missing = {k: v for k, v in sd.items() if k != "features.12.bias"}
  with pytest.raises(ValueError, match=r"missing 1 entries.*features\.12\.bias"):
    perceptual.load_lpips_vgg16(write(tmp_path, missing))
  bad = dict(sd, **{"features.5.weight": np.zeros((6, 5, 3, 3), np.float32)})
  with pytest.raises(ValueError, match=r"'features\.5\.weight' must have shape \[Cout, 4, 3, 3\].*\[6, 5, 3, 3\]"):
    perceptual.load_lpips_vgg16(write(tmp_path, bad))
  bad = dict(sd, **{"lin2.model.1.weight": np.zeros((1, 7, 1, 1), np.float32)})
  with pytest.raises(ValueError, match=r"'lin2\.model\.1\.weight' must have shape \[1, 8, 1, 1\]"):
    perceptual.load_lpips_vgg16(write(tmp_path, bad))
  dup = dict(sd, **{"net.slice1.0.weight": sd["features.0.weight"]})
  with pytest.raises(ValueError, match="two entries for VGG16 features.0.weight"):
    perceptual.load_lpips_vgg16(write(tmp_path, dup))
  p = write(tmp_path, sd)
  with pytest.raises(ValueError, match="more than one weights file"):
    perceptual.load_lpips_vgg16([p, p])
  with pytest.raises(ValueError, match="must end in .safetensors"):
    (tmp_path / "w.npz").write_bytes(b"")
    perceptual.load_state_dict(str(tmp_path / "w.npz"))
