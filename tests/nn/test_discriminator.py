"""PatchGAN discriminator: layout and shapes, receptive-field locality, logical axes, config errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxtok.nn import discriminator as disc
from jaxtok.train import state as state_lib


def _shapes(model):
  return jax.tree.map(lambda v: tuple(v.shape), nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_layout_and_output_shapes():
  m = nnx.eval_shape(lambda: disc.make_discriminator({"channels": 64, "num_layers": 3},
                                                     rngs=nnx.Rngs(0)))
  s = _shapes(m)
  assert s["stem"] == {"kernel": (4, 4, 3, 64), "bias": (64,)}
  # Normalised convs have no bias; multipliers min(2^n, 8) = 1, 2, 4, 8.
  assert [s["convs"][i]["kernel"] for i in range(3)] == [(4, 4, 64, 128), (4, 4, 128, 256),
                                                          (4, 4, 256, 512)]
  assert all("bias" not in s["convs"][i] for i in range(3))
  assert s["norms"][2] == {"scale": (512,), "bias": (512,)}
  assert s["head"] == {"kernel": (4, 4, 512, 1), "bias": (1,)}
  # 256 -> 128, 64, 32 (stride 2) -> 31, 30 (stride 1, padding 1): the 30x30 PatchGAN map.
  graphdef, state = nnx.split(m)
  out = jax.eval_shape(lambda st, x: nnx.merge(graphdef, st)(x), state,
                       jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32))
  assert out.shape == (2, 30, 30)
  assert disc.default_multipliers(5) == (1, 2, 4, 8, 8, 8)
  # Logical axes as the VQGAN convs: kernels (-, -, conv_in, conv_out).
  specs = nnx.get_partition_spec(nnx.state(m, nnx.Param))
  assert specs["convs"][0]["kernel"].get_value() == P(None, None, "conv_in", "conv_out")
  assert specs["norms"][0]["scale"].get_value() == P("conv_out")


def test_norm_options_and_multipliers():
  m = nnx.eval_shape(lambda: disc.make_discriminator(
      {"channels": 4, "num_layers": 2, "channel_multipliers": [1, 3, 3], "norm": "none"},
      rngs=nnx.Rngs(0)))
  s = _shapes(m)
  assert s["convs"][0] == {"kernel": (4, 4, 4, 12), "bias": (12,)} and m.norms[0] is None
  build = lambda cfg: nnx.eval_shape(lambda: disc.make_discriminator(cfg, rngs=nnx.Rngs(0)))
  assert build({"channels": 4, "num_layers": 1, "norm": "instance"}).norms[0].num_groups == 8
  # The largest divisor of the width (12, then 10) that is <= num_groups.
  assert build({"channels": 6, "num_layers": 1, "num_groups": 4}).norms[0].num_groups == 4
  assert build({"channels": 5, "num_layers": 1, "num_groups": 4}).norms[0].num_groups == 2


def test_patch_locality_and_finite_logits():
  # One stride-2 conv, then two stride-1 4x4 convs: a 16-pixel receptive field. Logit [0, 0] sees
  # pixels [0, 10) only, so changing pixel (63, 63) cannot move it, but moves the last logit.
  # (Without a norm: group statistics over the whole map would couple every logit to every pixel.)
  md = state_lib.model_def(lambda rngs: disc.make_discriminator(
      {"channels": 4, "num_layers": 1, "norm": "none"}, rngs=rngs))
  x = np.random.default_rng(0).random((2, 64, 64, 3)).astype(np.float32)
  y = x.copy()
  y[:, 63, 63] = 1.0 - y[:, 63, 63]
  # Parameters from numpy (compiling the random initialisers costs seconds on CPU).
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda a: (0.2 * rng.standard_normal(a.shape)).astype(np.float32),
                        jax.eval_shape(md.init, jax.random.key(1)))
  both = jax.jit(lambda p, a: nnx.merge(md.graphdef, p)(a))(params, np.concatenate([x, y]))
  lx, ly = both[:2], both[2:]
  assert lx.shape == (2, 30, 30) and lx.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(lx)))
  np.testing.assert_array_equal(lx[:, :20, :20], ly[:, :20, :20])
  assert float(jnp.abs(lx[:, -1, -1] - ly[:, -1, -1]).max()) > 0


def test_config_errors():
  with pytest.raises(ValueError, match="unknown fields \\['ndf'\\]"):
    disc.make_discriminator({"ndf": 64}, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="norm must be one of"):
    disc.make_discriminator({"norm": "batch"}, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="channel_multipliers must be 4 positive ints"):
    disc.make_discriminator({"channel_multipliers": (1, 2)}, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="channels must be a positive int, got 0"):
    disc.make_discriminator({"channels": 0}, rngs=nnx.Rngs(0))
  m = nnx.eval_shape(lambda: disc.make_discriminator({"channels": 4, "num_layers": 1},
                                                     rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"images must be \[B, H, W, 3\]"):
    m(jnp.zeros((1, 8, 8, 1)))
