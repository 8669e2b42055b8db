"""The E-CAR generator: its block-causal stage mask by hand, prefix conditions == the full pass
(what the stage-by-stage sampler relies on), the loss under jit with gradients, strict config."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.configs import ecar_vae
from jaxtok.generators import ecar

KEY = functools.partial(jax.random.key, impl="rbg")


def test_stage_mask_by_hand():
  m = ecar.stage_mask((1, 2))   # [class, stage 0 (1 token), stage 1 (4 tokens)]
  want = np.array([[1, 0, 0, 0, 0, 0],
                   [1, 1, 0, 0, 0, 0]] + [[1, 1, 1, 1, 1, 1]] * 4, bool)
  np.testing.assert_array_equal(m, want)


@pytest.fixture(scope="module")
def model():
  cfg = ecar_vae.get_config("tiny")
  cfg.model.num_classes = 3
  return ecar.make_model(cfg.model, rngs=nnx.Rngs(KEY(0)))


@pytest.mark.slow
def test_prefix_conditions_and_loss(model):
  assert model.sides == (1, 2, 4) and model.grid_side == 4
  maps = tuple(jax.random.normal(jax.random.fold_in(KEY(0), j), (2, r, r, 4))
               for j, r in enumerate(model.sides))
  labels = jnp.array([2, -1])
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, tokens, rng):
    m = nnx.merge(graphdef, state)
    full = m.condition(maps, labels)
    pre = m.stage_condition(maps[:2], labels)
    (value, metrics), grads = jax.value_and_grad(
        lambda s: ecar.loss(nnx.merge(graphdef, s), tokens, labels, rng=rng), has_aux=True)(state)
    return full, pre, value, metrics, jax.tree.leaves(grads)

  tokens = jax.random.normal(KEY(1), (2, 16, 4))
  full, pre, value, metrics, grads = run(state, tokens, KEY(2))
  assert full.shape == (2, 1 + 4 + 16, 32)
  # Stage 1's conditions from the two-stage prefix equal those of the full sequence.
  np.testing.assert_allclose(pre, full[:, 1:5], rtol=1e-5, atol=1e-5)
  assert np.isfinite(float(value)) and sorted(metrics) == ["loss", "loss_stage0", "loss_stage1",
                                                           "loss_stage2"]
  np.testing.assert_allclose(float(value), np.mean([float(metrics[f"loss_stage{k}"]) for k in range(3)]),
                             rtol=1e-6)
  assert all(np.all(np.isfinite(g)) for g in grads)
  with pytest.raises(ValueError, match=r"tokens must be \[B, 16, 4\], got \(2, 8, 4\)"):
    ecar.loss(model, tokens[:, :8], labels, rng=KEY(0))
  with pytest.raises(ValueError, match=r"inputs\[1\] must be \[B, 2, 2, 4\]"):
    model.condition((maps[0], maps[2]))


def test_config_is_strict():
  cfg = ecar_vae.get_config("tiny")
  cfg.model.stages = 2
  with pytest.raises(ValueError, match="stages"):
    ecar.make_model(cfg.model, rngs=nnx.Rngs(0))
  cfg = ecar_vae.get_config("tiny,tokens=36")   # side 6 cannot halve twice
  with pytest.raises(ValueError, match=r"grid_side must be divisible by 2\^\(num_stages-1\)=4"):
    ecar.make_model(cfg.model, rngs=nnx.Rngs(0))
