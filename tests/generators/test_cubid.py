"""CubiD: the element masking ratio and schedule by hand, the cube sampler (given elements kept,
per-step counts, one model call per step), and the tiny config trains with falling loss."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxtok.generators import cubid as cubid_lib
from jaxtok.samplers import cubid, schedules

KEY = functools.partial(jax.random.key, impl="rbg")


def test_element_mask_ratio_and_schedule_by_hand():
  np.testing.assert_allclose(cubid_lib.cosine_ratio(jnp.array([0.0, 1 / 3, 2 / 3, 1.0])),
                             [1.0, math.cos(math.pi / 6), 0.5, 1e-6], rtol=1e-6)
  rng = jax.random.key(3)
  b, t, d = 64, 4, 3
  mask = cubid_lib.element_mask(rng, b, t, d)
  assert mask.shape == (b, t, d) and mask.dtype == jnp.bool_
  # The ratio comes from the first half of the split key: u ~ U(0, 1), n = max(1, round(12 cos(pi u / 2))).
  u = np.asarray(jax.random.uniform(jax.random.split(rng)[0], (b,)), np.float64)
  want = np.maximum(1, np.round(t * d * np.clip(np.cos(u * math.pi / 2), 1e-6, 1.0)))
  np.testing.assert_array_equal(np.asarray(mask).reshape(b, -1).sum(-1), want)
  # Elements are chosen uniformly over positions and dimensions: both axes are used.
  assert np.asarray(mask).any(axis=(0, 1)).all() and np.asarray(mask).any(axis=(0, 2)).all()


def _toy_logits(calls):
  """A fixed model over a [T=3, D=2] cube with 4 levels whose logits depend on the revealed
  elements; counts its calls (one callback per traced execution) and records the batch sizes."""
  w = jax.random.normal(jax.random.key(0), (6 * 5, 6 * 4))

  def fn(grid, cond):
    jax.debug.callback(lambda n: calls.append(int(n)), grid.shape[0])
    onehot = jax.nn.one_hot(grid.reshape(grid.shape[0], -1), 5).reshape(grid.shape[0], -1)
    out = onehot @ w + cond[:, None].astype(jnp.float32)
    return out.reshape(grid.shape[0], 3, 2, 4)

  return fn


@pytest.mark.parametrize("order", ["confidence", "random"])
def test_sampler_keeps_given_elements_counts_and_calls(order):
  calls = []
  fn = _toy_logits(calls)
  mask_id, b = 4, 5
  rng = np.random.default_rng(0)
  given = rng.integers(0, 4, (b, 3, 2))
  keep = rng.random((b, 3, 2)) < 0.3
  grid = jnp.asarray(np.where(keep, given, mask_id), jnp.int32)
  labels = jnp.arange(b, dtype=jnp.int32)
  run = jax.jit(lambda r, g: cubid.sample(r, fn, g, mask_id=mask_id, steps=3, order=order,
                                          cond=labels, uncond=jnp.full_like(labels, -1),
                                          cfg_scale=2.0, top_k=3))
  out, counts = run(KEY(1), grid)
  jax.effects_barrier()
  out, counts = np.asarray(out), np.asarray(counts)
  assert out.min() >= 0 and out.max() < 4  # everything revealed
  np.testing.assert_array_equal(out[keep], given[keep])  # given elements never change
  # Masked after each step = the cosine table row of each sample's initial masked count.
  table = schedules.mask_count_table("cosine", 6, 3)
  np.testing.assert_array_equal(counts.T, table[(~keep).reshape(b, -1).sum(-1)])
  # One model call per step, cond and uncond halves as one batch of 2B.
  assert calls == [2 * b] * 3
  with pytest.raises(ValueError, match="order must be one of"):
    cubid.sample(KEY(1), fn, grid, mask_id=mask_id, steps=3, order="raster", cond=labels)


@pytest.mark.slow
def test_tiny_trains_with_falling_loss_and_samples():
  from jaxtok.configs import cubid_vae
  from jaxtok.eval import generate
  cfg = cubid_vae.get_config("tiny")
  cfg.model.num_classes = 2
  model = cubid_lib.make_model(cfg.model, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  labels = jnp.asarray(rng.integers(0, 2, 16), jnp.int32)
  base = rng.normal(size=(2, 8, 4)) * 1.5
  tokens = jnp.asarray(base[np.asarray(labels)] + 0.05 * rng.normal(size=(16, 8, 4)), jnp.float32)
  graphdef, params = nnx.split(model)
  tx = optax.adam(1e-2)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, i):
    f = lambda p: cubid_lib.loss(nnx.merge(graphdef, p), tokens, labels, rng=jax.random.key(i))[0]
    value, grads = jax.value_and_grad(f)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, value

  losses = []
  for i in range(30):
    params, opt, value = step(params, opt, i)
    losses.append(float(value))
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3, losses
  sampler = generate.make_sampler("cubid", graphdef, params,
                                  generate.Options(steps=4, cfg_scale=2.0, top_k=4))
  out = sampler(jax.random.key(0), jnp.array([0, 1]))
  assert out.shape == (2, 8, 4) and out.dtype == jnp.float32
  np.testing.assert_array_equal(model.dequantize(model.quantize(out)[0]), out)  # on the grid


def test_bad_config_and_inputs():
  with pytest.raises(ValueError, match=r"unknown cubid config key\(s\) \['levels'\]"):
    cubid_lib.make_model({"name": "cubid", "token_dim": 4, "seq_len": 8, "levels": 16},
                         rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="bits must be <= 16, got 17"):
    cubid_lib.CubiD(token_dim=4, seq_len=8, bits=17, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"grid must be \[B, T, D\]"):
    cubid.sample(KEY(0), lambda g: g, jnp.zeros((2, 6), jnp.int32), mask_id=4, steps=2)
