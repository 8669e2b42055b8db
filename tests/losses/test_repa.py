"""REPA / GigaTok semantic-regularisation pieces: the loss against a hand-derived value, the
projector, the teacher's grid matching, and `config.repa` validation (no weights file -> ValueError)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.losses import repa
from jaxtok.nn import dinov2

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "official", "dinov2_tiny.safetensors")


def test_alignment_loss_hand_derived():
  # Batch 2, 2 tokens, D 2. Sample 0: token 0 h=(1,0), f=(2,0): cos 1; token 1 h=(0,3), f=(1,0): cos 0.
  # Sample 1: token 0 h=(1,1), f=(1,0): cos 1/sqrt(2); token 1 h=(1,0), f=(-5,0): cos -1.
  # Per-sample mean of -cos: -(1 + 0)/2 = -0.5 and -(1/sqrt(2) - 1)/2; batch mean of those.
  h = jnp.array([[[1.0, 0.0], [0.0, 3.0]], [[1.0, 1.0], [1.0, 0.0]]])
  f = jnp.array([[[2.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [-5.0, 0.0]]])
  want = (-0.5 + -(2**-0.5 - 1.0) / 2) / 2
  np.testing.assert_allclose(float(repa.alignment_loss(h, f)), want, rtol=1e-6)
  assert float(repa.alignment_loss(h, h)) == pytest.approx(-1.0)
  # Zero vectors give 0 (F.normalize's eps), not NaN, and have finite gradients.
  z = jnp.zeros((1, 1, 2))
  assert float(repa.alignment_loss(z, f[:1, :1])) == 0.0
  assert np.all(np.isfinite(jax.grad(lambda x: repa.alignment_loss(x, f))(h)))
  with pytest.raises(ValueError, match=r"\(2, 2, 2\) and \(2, 1, 2\)"):
    repa.alignment_loss(h, f[:, :1])


def test_projector_is_three_dense_layers_with_silu():
  p = repa.Projector(4, 8, 3, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(0), (2, 5, 4))
  h = jax.nn.silu(x @ p.fc1.kernel[...] + p.fc1.bias[...])
  h = jax.nn.silu(h @ p.fc2.kernel[...] + p.fc2.bias[...])
  np.testing.assert_allclose(p(x), h @ p.fc3.kernel[...] + p.fc3.bias[...], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="Projector hidden must be an int >= 1, got 0"):
    repa.Projector(4, 0, 3, rngs=nnx.Rngs(0))


def test_settings_refuse_missing_weights_unknown_keys_and_bad_weight(tmp_path):
  assert repa.settings(None) is None
  assert repa.settings({"weight": 0.0}) is None
  with pytest.raises(ValueError, match="needs config.repa.weights.*dinov2_vitb14_reg4_pretrain.pth"):
    repa.settings({"weight": 0.5})
  with pytest.raises(ValueError, match=r"unknown keys \['layer'\]"):
    repa.settings({"weight": 0.5, "weights": "x.pth", "layer": 3})
  with pytest.raises(ValueError, match="weight must be a number >= 0, got -1"):
    repa.settings({"weight": -1, "weights": "x.pth"})
  with pytest.raises(TypeError, match="config.repa must be a dict"):
    repa.settings("dinov2.pth")
  cfg = repa.settings({"weight": 0.5, "weights": str(tmp_path / "missing.pth")})
  with pytest.raises(ValueError, match="missing.pth' does not exist.*never downloads"):
    repa.load_teacher(cfg)


def test_teacher_resizes_to_the_decoder_grid_like_repa():
  """grid g -> the image is resized (torch bicubic) to g*14 px and DINOv2 gives g*g patch features."""
  fn, params, cfg = repa.load_teacher(repa.settings(
      {"weight": 0.5, "weights": FIXTURE, "prefix": "reg.", "dinov2": {"num_heads": 2}}))
  assert fn.width == 32 and cfg["num_registers"] == 4
  images = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
  out = fn(params, images, 3)
  assert out.shape == (2, 9, 32)
  model = dinov2.features_fn(cfg)
  want = model(params, dinov2.resize_bicubic(images, (42, 42)))["x_norm_patchtokens"]
  np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


def test_config_arguments_turn_repa_on():
  import configs.flextok  # pylint: disable=g-import-not-at-top
  import configs.titok  # pylint: disable=g-import-not-at-top
  assert configs.flextok.get_config("tiny").repa is None
  c = configs.flextok.get_config("tiny,repa=/data/dinov2_vitl14_reg4_pretrain.pth,repa_layer=1")
  assert (c.model.repa_layer, c.model.repa_dim, c.model.repa_hidden) == (1, 1024, 2048)
  assert repa.settings(c.repa) == dict(weight=0.5, weights="/data/dinov2_vitl14_reg4_pretrain.pth",
                                       prefix="", dinov2=None)
  c = configs.titok.get_config("tiny,repa=/d/b.pth,repa_layer=1,repa_size=S")
  assert (c.model.repa_layer, c.model.repa_dim, c.model.repa_hidden) == (1, 384, 128)
  with pytest.raises(ValueError, match="repa_layer=2 needs repa=PATH"):
    configs.flextok.get_config("tiny,repa_layer=2")
  with pytest.raises(ValueError, match="needs repa_layer=K >= 1"):
    configs.titok.get_config("tiny,repa=/d/b.pth")
  with pytest.raises(ValueError, match="repa_size must be one of"):
    configs.titok.get_config("tiny,repa=/d/b.pth,repa_layer=1,repa_size=XL")
