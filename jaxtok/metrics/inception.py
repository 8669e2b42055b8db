"""The FID Inception-v3 feature network, as a pure function over the standard FID weights.

FID is only comparable across papers when computed with the TensorFlow 2015 Inception graph; the
widely used PyTorch port of it (pytorch-fid's `pt_inception-2015-12-05-*.pth`) is what this module
reads. Its layout is torchvision's Inception-v3 with the FID-specific blocks: average pools in the A,
C and first E blocks exclude padding from the mean, and the last E block max-pools its pool branch.
The user supplies the weights file; nothing is downloaded.

Parameters are a flat dict keyed by the PyTorch names (`Mixed_5b.branch1x1.conv.weight`, ...), with
convolution kernels kept in PyTorch's OIHW order in the file and converted to HWIO on load. Batch
norms use the running statistics with eps 1e-3 (inference). Input images are float [B, H, W, 3] in
[0, 1]; they are resized to 299x299 bilinearly (half-pixel centres, no antialiasing, as
torch.nn.functional.interpolate(align_corners=False)) and mapped to [-1, 1]. The output is the 2048-d
pool3 feature per image.
"""
from __future__ import annotations

import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

FEATURE_DIM = 2048
_BN_EPS = 1e-3

# name -> (in, out, kernel (h, w), stride, padding (h, w)) for every BasicConv2d of the network.
def _conv_specs() -> dict[str, tuple[int, int, tuple[int, int], int, tuple[int, int]]]:
  s: dict = {}

  def add(name, cin, cout, k=(1, 1), stride=1, pad=(0, 0)):
    s[name] = (cin, cout, k, stride, pad)

  add("Conv2d_1a_3x3", 3, 32, (3, 3), 2)
  add("Conv2d_2a_3x3", 32, 32, (3, 3))
  add("Conv2d_2b_3x3", 32, 64, (3, 3), 1, (1, 1))
  add("Conv2d_3b_1x1", 64, 80)
  add("Conv2d_4a_3x3", 80, 192, (3, 3))
  for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
    add(f"{name}.branch1x1", cin, 64)
    add(f"{name}.branch5x5_1", cin, 48)
    add(f"{name}.branch5x5_2", 48, 64, (5, 5), 1, (2, 2))
    add(f"{name}.branch3x3dbl_1", cin, 64)
    add(f"{name}.branch3x3dbl_2", 64, 96, (3, 3), 1, (1, 1))
    add(f"{name}.branch3x3dbl_3", 96, 96, (3, 3), 1, (1, 1))
    add(f"{name}.branch_pool", cin, pool)
  add("Mixed_6a.branch3x3", 288, 384, (3, 3), 2)
  add("Mixed_6a.branch3x3dbl_1", 288, 64)
  add("Mixed_6a.branch3x3dbl_2", 64, 96, (3, 3), 1, (1, 1))
  add("Mixed_6a.branch3x3dbl_3", 96, 96, (3, 3), 2)
  for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
    add(f"{name}.branch1x1", 768, 192)
    add(f"{name}.branch7x7_1", 768, c7)
    add(f"{name}.branch7x7_2", c7, c7, (1, 7), 1, (0, 3))
    add(f"{name}.branch7x7_3", c7, 192, (7, 1), 1, (3, 0))
    add(f"{name}.branch7x7dbl_1", 768, c7)
    add(f"{name}.branch7x7dbl_2", c7, c7, (7, 1), 1, (3, 0))
    add(f"{name}.branch7x7dbl_3", c7, c7, (1, 7), 1, (0, 3))
    add(f"{name}.branch7x7dbl_4", c7, c7, (7, 1), 1, (3, 0))
    add(f"{name}.branch7x7dbl_5", c7, 192, (1, 7), 1, (0, 3))
    add(f"{name}.branch_pool", 768, 192)
  add("Mixed_7a.branch3x3_1", 768, 192)
  add("Mixed_7a.branch3x3_2", 192, 320, (3, 3), 2)
  add("Mixed_7a.branch7x7x3_1", 768, 192)
  add("Mixed_7a.branch7x7x3_2", 192, 192, (1, 7), 1, (0, 3))
  add("Mixed_7a.branch7x7x3_3", 192, 192, (7, 1), 1, (3, 0))
  add("Mixed_7a.branch7x7x3_4", 192, 192, (3, 3), 2)
  for name, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
    add(f"{name}.branch1x1", cin, 320)
    add(f"{name}.branch3x3_1", cin, 384)
    add(f"{name}.branch3x3_2a", 384, 384, (1, 3), 1, (0, 1))
    add(f"{name}.branch3x3_2b", 384, 384, (3, 1), 1, (1, 0))
    add(f"{name}.branch3x3dbl_1", cin, 448)
    add(f"{name}.branch3x3dbl_2", 448, 384, (3, 3), 1, (1, 1))
    add(f"{name}.branch3x3dbl_3a", 384, 384, (1, 3), 1, (0, 1))
    add(f"{name}.branch3x3dbl_3b", 384, 384, (3, 1), 1, (1, 0))
    add(f"{name}.branch_pool", cin, 192)
  return s


CONV_SPECS = _conv_specs()


def expected_shapes() -> dict[str, tuple[int, ...]]:
  """Every tensor the network reads, with its shape in the PyTorch file (conv weights OIHW)."""
  shapes = {}
  for name, (cin, cout, (kh, kw), _, _) in CONV_SPECS.items():
    shapes[f"{name}.conv.weight"] = (cout, cin, kh, kw)
    for p in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{name}.bn.{p}"] = (cout,)
  return shapes


def convert_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
  """Checks a PyTorch-layout state dict and converts it to jaxtok's parameters.

  Extra keys (the classifier `fc.*`, `num_batches_tracked`) are ignored. Missing keys or wrong shapes
  raise ValueError listing them.
  """
  want = expected_shapes()
  missing = sorted(k for k in want if k not in state_dict)
  wrong = sorted(f"{k}: expected {want[k]}, got {tuple(np.shape(state_dict[k]))}"
                 for k in want if k in state_dict and tuple(np.shape(state_dict[k])) != want[k])
  if missing or wrong:
    raise ValueError("FID Inception weights do not match the network: "
                     + (f"missing {len(missing)} keys (first: {missing[:5]}); " if missing else "")
                     + (f"mismatched shapes: {wrong[:5]}" if wrong else ""))
  params = {}
  for k in want:
    v = np.asarray(state_dict[k], np.float32)
    params[k] = jnp.asarray(v.transpose(2, 3, 1, 0) if k.endswith("conv.weight") else v)
  return params


def load_params(path: str) -> dict[str, jax.Array]:
  """Loads FID Inception weights from `.pth`/`.pt` (torch.load with weights_only=True, never
  unpickling arbitrary objects), `.safetensors`, or `.npz` (arrays keyed by the PyTorch names).

  This reads a weights file, not a jaxtok checkpoint; the file formats other than `.npz` are read
  by the converters' reader (`jaxtok.convert.common.read_checkpoint`).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"FID Inception weights not found at {path!r}; pass the pytorch-fid "
                            "file pt_inception-2015-12-05-6726825d.pth (jaxtok never downloads it)")
  if os.path.splitext(path)[1].lower() == ".npz":
    with np.load(path, allow_pickle=False) as f:
      return convert_state_dict({k: f[k] for k in f.files})
  from jaxtok.convert import common  # pylint: disable=g-import-not-at-top
  return convert_state_dict(common.read_checkpoint(path)[0])


def _conv_bn_relu(params, name, x):
  _, _, _, stride, (ph, pw) = CONV_SPECS[name]
  y = jax.lax.conv_general_dilated(
      x, params[f"{name}.conv.weight"], (stride, stride), ((ph, ph), (pw, pw)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
  scale = params[f"{name}.bn.weight"] * jax.lax.rsqrt(params[f"{name}.bn.running_var"] + _BN_EPS)
  return jax.nn.relu((y - params[f"{name}.bn.running_mean"]) * scale + params[f"{name}.bn.bias"])


def _max_pool(x, k=3, stride=2, pad=0):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, stride, stride, 1),
                               ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def _avg_pool_exclude_pad(x):
  """3x3 stride-1 average pool with padding 1, dividing by the number of real (unpadded) inputs."""
  window, strides, pads = (1, 3, 3, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pads)
  count = jax.lax.reduce_window(jnp.ones(x.shape[:3] + (1,), x.dtype), 0.0, jax.lax.add, window,
                                strides, pads)
  return total / count


def _block_a(p, n, x):
  c = lambda name, y: _conv_bn_relu(p, f"{n}.{name}", y)
  b1 = c("branch1x1", x)
  b5 = c("branch5x5_2", c("branch5x5_1", x))
  b3 = c("branch3x3dbl_3", c("branch3x3dbl_2", c("branch3x3dbl_1", x)))
  bp = c("branch_pool", _avg_pool_exclude_pad(x))
  return jnp.concatenate([b1, b5, b3, bp], -1)


def _block_b(p, n, x):
  c = lambda name, y: _conv_bn_relu(p, f"{n}.{name}", y)
  b3 = c("branch3x3", x)
  bd = c("branch3x3dbl_3", c("branch3x3dbl_2", c("branch3x3dbl_1", x)))
  return jnp.concatenate([b3, bd, _max_pool(x)], -1)


def _block_c(p, n, x):
  c = lambda name, y: _conv_bn_relu(p, f"{n}.{name}", y)
  b1 = c("branch1x1", x)
  b7 = c("branch7x7_3", c("branch7x7_2", c("branch7x7_1", x)))
  bd = x
  for i in range(1, 6):
    bd = c(f"branch7x7dbl_{i}", bd)
  bp = c("branch_pool", _avg_pool_exclude_pad(x))
  return jnp.concatenate([b1, b7, bd, bp], -1)


def _block_d(p, n, x):
  c = lambda name, y: _conv_bn_relu(p, f"{n}.{name}", y)
  b3 = c("branch3x3_2", c("branch3x3_1", x))
  b7 = x
  for i in range(1, 5):
    b7 = c(f"branch7x7x3_{i}", b7)
  return jnp.concatenate([b3, b7, _max_pool(x)], -1)


def _block_e(p, n, x, max_pool_branch: bool):
  c = lambda name, y: _conv_bn_relu(p, f"{n}.{name}", y)
  b1 = c("branch1x1", x)
  b3 = c("branch3x3_1", x)
  b3 = jnp.concatenate([c("branch3x3_2a", b3), c("branch3x3_2b", b3)], -1)
  bd = c("branch3x3dbl_2", c("branch3x3dbl_1", x))
  bd = jnp.concatenate([c("branch3x3dbl_3a", bd), c("branch3x3dbl_3b", bd)], -1)
  pooled = _max_pool(x, 3, 1, 1) if max_pool_branch else _avg_pool_exclude_pad(x)
  return jnp.concatenate([b1, b3, bd, c("branch_pool", pooled)], -1)


def features(params: Mapping[str, jax.Array], images: jax.Array, *, resize: bool = True) -> jax.Array:
  """Pool3 features [B, 2048] float32 of images float [B, H, W, 3] in [0, 1]."""
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be [B, H, W, 3], got shape {tuple(images.shape)}")
  x = images.astype(jnp.float32)
  if resize and x.shape[1:3] != (299, 299):
    x = jax.image.resize(x, (x.shape[0], 299, 299, 3), "bilinear", antialias=False)
  x = 2.0 * x - 1.0
  for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"):
    x = _conv_bn_relu(params, name, x)
  x = _max_pool(x)
  x = _conv_bn_relu(params, "Conv2d_4a_3x3", _conv_bn_relu(params, "Conv2d_3b_1x1", x))
  x = _max_pool(x)
  for n in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
    x = _block_a(params, n, x)
  x = _block_b(params, "Mixed_6a", x)
  for n in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
    x = _block_c(params, n, x)
  x = _block_d(params, "Mixed_7a", x)
  x = _block_e(params, "Mixed_7b", x, max_pool_branch=False)
  x = _block_e(params, "Mixed_7c", x, max_pool_branch=True)
  return jnp.mean(x, axis=(1, 2))
