"""The release's SDE sampler (`samplers.flow_sde`, `next_x` method "sde"): its grid and one step by
hand, the ODE's Euler at noise_scale 0, a Gaussian target's moments under the oracle velocity, the
model calls it makes, and the KV-cached path equal to the recompute with the same noise."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.generators import xar
from jaxtok.samplers import flow, flow_sde, next_x

MU, SIGMA = np.array([1.0, -0.5], np.float32), np.array([0.5, 1.5], np.float32)


def _gaussian_oracle(x, t, cond):
  """E[eps - x | x_t] for x ~ N(MU, SIGMA^2) per dimension, x_t = (1 - t) x + t eps: with a = 1 - t
  and V = a^2 SIGMA^2 + t^2, (t - a SIGMA^2) / V (x_t - a MU) - MU."""
  a = 1.0 - t
  var = a**2 * SIGMA**2 + t**2
  return (t - a * SIGMA**2) / var * (x - a * MU) - MU


def _toy(x, t, cond):
  """A nonlinear field; cond [B] (or None) shifts it, so guidance matters."""
  return jnp.sin(3.0 * x) * (1.0 + t) + x * t + (0.0 if cond is None else cond[:, None])


def test_grid_and_two_steps_by_hand():
  np.testing.assert_allclose(flow_sde.times(4), [1.0, 0.68, 0.36, 0.04, 0.0], atol=1e-7)
  np.testing.assert_array_equal(flow_sde.times(1), [1.0, 0.0])
  # steps = 2: grid [1, 0.04, 0]. v = 2 x + t. Step 0 (t = 1, dt = -0.96): drift (1 + w (1 - t)) v
  # + w x = v + x = 3 x + 1, noise sqrt(2 * 1 * 0.96) n. Last step (t = 0.04, dt = -0.04): drift
  # (1 + 0.96) v + x = 1.96 (2 x + 0.04) + x, no noise.
  x1 = np.array([[0.5, -1.0]], np.float32)
  n = np.array([[0.3, 0.7]], np.float32)
  got = flow_sde.sample(lambda x, t, c: 2 * x + t, x1, steps=2, noise_fn=lambda i: jnp.asarray(n))
  x = x1 - 0.96 * (3 * x1 + 1) + np.sqrt(2 * 0.96) * n
  x = x - 0.04 * (1.96 * (2 * x + 0.04) + x)
  np.testing.assert_allclose(got, x, rtol=1e-5)
  # noise_scale w = 0.5 scales g^2 in the drift and the noise alike.
  half = flow_sde.sample(lambda x, t, c: 2 * x + t, x1, steps=2, noise_scale=0.5,
                         noise_fn=lambda i: jnp.asarray(n))
  x = x1 - 0.96 * (2 * x1 + 1 + 0.5 * x1) + np.sqrt(0.5 * 2 * 0.96) * n
  x = x - 0.04 * ((1 + 0.5 * 0.96) * (2 * x + 0.04) + 0.5 * x)
  np.testing.assert_allclose(half, x, rtol=1e-5)


@pytest.mark.parametrize("guided", [False, True])
def test_zero_noise_is_the_ode_euler(guided):
  """noise_scale 0 on the grid with last_t = 1 / steps is `flow.sample`'s Euler (uniform grid),
  with guidance too (same cond/uncond batching, same combination)."""
  x1 = jax.random.normal(jax.random.key(0), (3, 4))
  cond = jnp.array([0.5, -1.0, 2.0])
  kw = dict(uncond=jnp.zeros(3), cfg_scale=2.5) if guided else {}
  sde = flow_sde.sample(_toy, x1, cond, steps=5, noise_scale=0.0, last_t=0.2, **kw)
  ode = flow.sample(flow.flip_time(_toy), x1, cond, steps=5, **kw)
  np.testing.assert_allclose(sde, ode, atol=1e-6, rtol=0)
  # with noise the sample moves away from the ODE's
  noisy = flow_sde.sample(_toy, x1, cond, rng=jax.random.key(1), steps=5, last_t=0.2, **kw)
  assert float(jnp.abs(noisy - ode).max()) > 0.1


def test_gaussian_target_moments_under_the_oracle_velocity():
  """4000 samples of a 2-dim Gaussian through the release's sampler (50 steps, last_t 0.04,
  noise_scale 1) from the exact velocity: sample means within 4 standard errors
  (SIGMA / sqrt(4000): 0.032 and 0.095) and standard deviations within 5% of the target's."""
  x1 = jax.random.normal(jax.random.key(0), (4000, 2))
  run = jax.jit(lambda r: flow_sde.sample(_gaussian_oracle, x1, rng=r, steps=50))
  for seed in (1, 2):
    out = np.asarray(run(jax.random.key(seed)))
    assert np.all(np.abs(out.mean(0) - MU) < 4 * SIGMA / np.sqrt(4000)), out.mean(0)
    assert np.all(np.abs(out.std(0) / SIGMA - 1) < 0.05), out.std(0)
  # the SDE's samples are not the ODE's map of the same starting noise
  ode = np.asarray(flow.sample(flow.flip_time(_gaussian_oracle), x1, steps=50))
  assert np.abs(out - ode).mean() > 0.1


def test_one_call_per_step_with_and_without_guidance():
  calls = []

  def counted(x, t, cond):
    jax.debug.callback(lambda n=x.shape[0]: calls.append(n))
    return _toy(x, t, cond)

  x1 = jnp.ones((2, 3))
  jax.block_until_ready(jax.jit(lambda r: flow_sde.sample(counted, x1, rng=r, steps=7))(
      jax.random.key(0)))
  assert calls == [2] * 7  # 6 Euler-Maruyama steps + the last drift-only step
  calls.clear()
  jax.block_until_ready(flow_sde.sample(counted, x1, jnp.ones(2), rng=jax.random.key(0), steps=3,
                                        uncond=jnp.zeros(2), cfg_scale=2.0))
  assert calls == [4] * 3  # guidance: one doubled batch per step


IDS = np.array([0, 0, 1, 1, 1, 2])


def _block_causal_toy(x, t, cond):
  """[B, T, D] velocity reading earlier entities' tokens at t == 0 (the clean context)."""
  ids = jnp.asarray(IDS)
  earlier = (ids[None, :] < ids[:, None]).astype(jnp.float32)
  ctx = jnp.einsum("qk,bkd->bqd", earlier, x * (t == 0.0)[..., None])
  return _toy(x, t[..., None], None) + 0.3 * ctx + cond[:, None, None]


def test_next_x_sde_at_zero_noise_is_euler_and_its_calls():
  calls = []

  def counted(x, t, cond):
    jax.debug.callback(lambda: calls.append(1))
    return _block_causal_toy(x, t, cond)

  kw = dict(batch=2, entity_ids=IDS, token_dim=3, steps=4, cond=jnp.array([1.0, -1.0]),
            uncond=jnp.zeros(2), cfg_scale=2.0)
  rng = jax.random.key(0)
  sde = next_x.sample(rng, counted, method="sde", noise_scale=0.0, sde_last_t=0.25, **kw)
  assert len(calls) == 3 * 4  # E entities x steps, as the ODE's Euler
  euler = next_x.sample(rng, _block_causal_toy, method="euler", **kw)
  np.testing.assert_allclose(sde, euler, atol=1e-5, rtol=0)
  noisy = next_x.sample(rng, _block_causal_toy, method="sde", **kw)
  assert float(jnp.abs(noisy - euler).max()) > 0.1


@pytest.mark.slow
def test_cached_sde_equals_recompute_on_a_rope_model():
  """A 1-layer xAR (2D RoPE, as released) on a 4 x 4 grid of 2 x 2 cells: `sample_cached` with the
  SDE draws the same noise at each entity's positions as `sample`, so both give one sample (to
  float32 round-off), guided; the cached path makes E x steps entity calls + E - 1 prefills."""
  m = xar.XAR(token_dim=2, seq_len=16, entity="cell", entity_size=2, num_classes=3, width=16,
              depth=1, heads=2, rope="2d", rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(m)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [a + 0.3 * jax.random.normal(r, a.shape)
                                     for a, r in zip(leaves, keys)])
  labels = jnp.array([0, 2])
  kw = dict(batch=2, token_dim=2, steps=3, method="sde", cond=labels,
            uncond=jnp.full_like(labels, -1), cfg_scale=2.0)
  calls = []

  @jax.jit
  def both(params, rng):
    model = nnx.merge(graphdef, params)

    def extend(x, t, start, cache, c):
      jax.debug.callback(lambda: calls.append(1))
      return model.extend(x, t, start, cache, c)

    cached = next_x.sample_cached(rng, extend, model.init_cache, entity_ids=model.entity_ids, **kw)
    return cached, next_x.sample(rng, model.velocity, entity_ids=model.entity_ids, **kw)

  cached, full = both(params, jax.random.key(3))
  assert len(calls) == 4 * 3 + 3
  assert float(jnp.abs(full).max()) > 0.1
  np.testing.assert_allclose(cached, full, atol=1e-4, rtol=0)


def test_bad_arguments():
  x1 = jnp.zeros((1, 2))
  with pytest.raises(ValueError, match="last_t must be in \\(0, 1\\), got 1.5"):
    flow_sde.times(3, 1.5)
  with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
    flow_sde.sample(_toy, x1, rng=jax.random.key(0), steps=0)
  with pytest.raises(ValueError, match="noise_scale must be >= 0, got -1"):
    flow_sde.sample(_toy, x1, rng=jax.random.key(0), steps=2, noise_scale=-1.0)
  with pytest.raises(ValueError, match="needs rng"):
    flow_sde.sample(_toy, x1, steps=2)
  kw = dict(batch=1, entity_ids=IDS, token_dim=3, steps=2, cond=jnp.zeros(1))
  with pytest.raises(ValueError, match="method must be one of .*'sde'.*got 'rk4'"):
    next_x.sample(jax.random.key(0), _block_causal_toy, method="rk4", **kw)
  with pytest.raises(ValueError, match="no shift.*got shift=3.0"):
    next_x.sample(jax.random.key(0), _block_causal_toy, method="sde", shift=3.0, **kw)
  with pytest.raises(ValueError, match="noise_scale must be >= 0, got -0.5"):
    next_x.sample(jax.random.key(0), _block_causal_toy, method="sde", noise_scale=-0.5, **kw)


@pytest.mark.slow
def test_generate_runs_the_config_flow_method():
  """`eval.generate` reads sampling.flow_method (the xAR config's full sizes: "sde"); "sde" at
  noise_scale 1 differs from the default Euler on one model and key, and a bad name is refused."""
  from jaxtok.configs import xar_vae  # pylint: disable=g-import-not-at-top
  from jaxtok.eval import generate  # pylint: disable=g-import-not-at-top
  assert xar_vae.get_config("size=B").sampling.flow_method == "sde"
  m = xar.XAR(token_dim=2, seq_len=4, grid_width=2, entity="token", width=16, depth=1, heads=2,
              rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(m)
  labels = jnp.array([-1, -1])
  out = {}
  for method in ("euler", "sde"):
    opts = generate.options_from_config({"num_steps": 2, "flow_method": method})
    out[method] = generate.make_sampler("xar", graphdef, params, opts)(jax.random.key(0), labels)
  assert out["sde"].shape == out["euler"].shape == (2, 4, 2)
  assert float(jnp.abs(out["sde"] - out["euler"]).max()) > 1e-3
  bad = generate.options_from_config({"flow_method": "rk4"})
  with pytest.raises(ValueError, match="method must be one of"):
    generate.make_sampler("xar", graphdef, params, bad)(jax.random.key(0), labels)
