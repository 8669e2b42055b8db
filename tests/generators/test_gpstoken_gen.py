"""GPSToken's generator (`jaxtok.generators.gpstoken_gen`) and the SiT SDE sampler
(`jaxtok.samplers.sit_sde`): normalisation, loss, sampler, layout conditioning, the layout bank."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.generators import gpstoken_gen as G
from jaxtok.samplers import sit_sde

S, D = 8, 9


@pytest.fixture(scope="module")
def model():
  """A tiny generator whose zero-initialised output layer and final modulation are replaced by random
  weights (else every velocity is 0, and time and class would not reach the output)."""
  m = G.make_model(dict(name="gpstoken_gen", token_dim=D, seq_len=S, num_classes=3, width=16,
                        depth=1, heads=2), rngs=nnx.Rngs(0))
  for i, k in enumerate((m.final_out.kernel, m.final_ada.kernel)):
    k.set_value(jax.random.normal(jax.random.key(5 + i), k.get_value().shape) * 0.3)
  return m


def _tokens(key, b=2):
  """Valid tokens [b, S, D]: sigmas in (0.1, 0.5), rho in (-0.5, 0.5), means in (-1, 1)."""
  k1, k2, k3 = jax.random.split(key, 3)
  sig = jax.random.uniform(k1, (b, S, 2), minval=0.1, maxval=0.5)
  rest = jax.random.uniform(k2, (b, S, 3), minval=-0.5, maxval=0.5)
  return jnp.concatenate([sig, rest, jax.random.normal(k3, (b, S, D - 5))], -1)


def _layout(key, b=2):
  k1, k2 = jax.random.split(key)
  return jnp.concatenate([jax.random.uniform(k1, (b, S, 2), minval=0.1, maxval=0.6),
                          jnp.zeros((b, S, 1)),
                          jax.random.uniform(k2, (b, S, 2), minval=-0.9, maxval=0.9)], -1)


def test_normalise_by_hand_and_round_trip_exact():
  tok = np.zeros((1, 1, D), np.float32)
  tok[0, 0, :5] = [0.5, 0.25, 0.5, -0.5, 0.75]
  tok[0, 0, 5:] = [1.0, 2.0, 3.0, 4.0]
  lay = np.array([[[0.25, 0.25, 0.0, -0.25, 0.5]]], np.float32)
  mean, std = np.full(D, 0.5, np.float32), np.full(D, 2.0, np.float32)
  want = (np.array([0.25, 0.0, 0.5, -0.25, 0.25, 1, 2, 3, 4]) - 0.5) / 2.0
  np.testing.assert_array_equal(G.normalise(tok, lay, mean, std)[0, 0], want)
  # Round trip: exact with dyadic statistics (every operation exact), to rounding with the release's.
  t, l = _tokens(jax.random.key(0)), _layout(jax.random.key(1))
  t, l = jnp.round(t * 64) / 64, jnp.round(l * 64) / 64  # dyadic: t - l and its inverse are exact
  m8 = jnp.round(jnp.arange(D) * 8.0 - 20.0) / 8.0
  s2 = 2.0 ** jnp.arange(-3, D - 3, dtype=jnp.float32)
  np.testing.assert_array_equal(G.denormalise(G.normalise(t, l, m8, s2), l, m8, s2), t)
  mr, sr = np.asarray(G.RELEASED_MEAN), np.asarray(G.RELEASED_STD)
  t21, l21 = jnp.concatenate([t, jnp.ones((2, S, 12))], -1), l
  np.testing.assert_allclose(G.denormalise(G.normalise(t21, l21, mr, sr), l21, mr, sr), t21,
                             atol=2e-6)
  # Per-row statistics [B, D] act row by row.
  rows = jnp.stack([m8, m8 + 1.0])
  out = G.normalise(t, l, rows, jnp.ones((2, D)))
  np.testing.assert_allclose(out[1], G.normalise(t[1:], l[1:], m8 + 1.0, jnp.ones(D))[0], atol=1e-6)


def test_denormalise_applies_the_release_clamps():
  x = jnp.full((1, 1, D), 10.0)
  out = G.denormalise(x, jnp.zeros((1, 1, 5)), jnp.zeros(D), jnp.ones(D))[0, 0]
  np.testing.assert_allclose(out[:3], [1 - 1e-5, 1 - 1e-5, 1 - 1e-5])
  np.testing.assert_array_equal(out[3:], 10.0)  # means and features are not clamped
  out = G.denormalise(-x, jnp.zeros((1, 1, 5)), jnp.zeros(D), jnp.ones(D))[0, 0]
  np.testing.assert_allclose(out[:3], [1e-5, 1e-5, -1 + 1e-5])


def test_token_stats_of_residuals():
  t, l = np.asarray(_tokens(jax.random.key(2), 3)), np.asarray(_layout(jax.random.key(3), 3))
  st = G.token_stats(t, l)
  r = np.concatenate([t[..., :5] - l, t[..., 5:]], -1).reshape(-1, D).astype(np.float64)
  np.testing.assert_allclose(st["mean"], r.mean(0), atol=1e-7)
  np.testing.assert_allclose(st["std"], r.std(0), rtol=1e-6)
  const = G.token_stats(np.ones((2, S, D)), np.ones((2, S, 5)))
  assert const["std"] == [1e-6] * D  # a constant channel normalises to 0, not NaN


def test_loss_is_its_definition(model):
  t, l = _tokens(jax.random.key(0)), _layout(jax.random.key(1))
  mean, std = jnp.full((2, D), 0.1), jnp.full((2, D), 0.5)
  labels = {"label": jnp.array([2, -1]), "layout": l, "mean": mean, "std": std}
  rng = jax.random.key(7)

  @jax.jit  # one compile for the loss (jit compatibility) and the hand computation
  def both(t, labels):
    value, metrics = G.loss(model, t, labels, rng=rng, train=False)
    # By hand: SiT's linear path, t ~ U[0, 1) per sample, x_t = t x1 + (1 - t) x0, target x1 - x0.
    r_t, r_x, _ = jax.random.split(rng, 3)
    tt = jax.random.uniform(r_t, (2,))
    x1 = (jnp.concatenate([t[..., :5] - l, t[..., 5:]], -1) - 0.1) / 0.5
    x0 = jax.random.normal(r_x, x1.shape)
    xt = tt[:, None, None] * x1 + (1 - tt[:, None, None]) * x0
    v = model.velocity(xt, tt, jnp.array([2, -1]), l)
    return value, metrics["mean_t"], jnp.mean((v - (x1 - x0)) ** 2), tt.mean()

  value, mean_t, want, want_t = both(t, labels)
  np.testing.assert_allclose(value, want, rtol=1e-5)
  np.testing.assert_allclose(mean_t, want_t, rtol=1e-6)
  assert float(value) > 0.1  # not a trivially zero comparison


def test_layout_conditions_the_output_and_is_required(model):
  x = jax.random.normal(jax.random.key(0), (2, S, D))
  la, lb = _layout(jax.random.key(1)), _layout(jax.random.key(2))
  y = jnp.array([0, 1, 0, 1])
  lay = jnp.concatenate([la, lb])

  @jax.jit
  def run(x, lay):
    v = model.velocity(jnp.concatenate([x, x]), jnp.array([0.3, 0.7, 0.3, 0.7]), y, lay)
    # The sampler from the same noise for both layouts (rows 0-1: la, rows 2-3: lb).
    fn = G.guided_velocity(model, y, lay, cfg_scale=1.5, guidance_low=0.0)
    return v, sit_sde.sample(fn, jnp.concatenate([x, x]), jax.random.key(3), steps=3)

  v, out = run(x, lay)
  assert float(jnp.abs(v[:2] - v[2:]).max()) > 1e-2
  # Other layouts give other samples before `denormalise` adds the layout back: the layout steers
  # the network, not only the postprocess.
  assert float(jnp.abs(out[:2] - out[2:]).max()) > 1e-2
  with pytest.raises(ValueError, match="needs the initial layout"):
    model.velocity(x, jnp.zeros(2), None, None)
  with pytest.raises(ValueError, match="needs the initial layout"):
    G.sample(model, jax.random.key(0), None, None, jnp.zeros(D), jnp.ones(D), steps=2)
  with pytest.raises(ValueError, match="labels {'label', 'layout', 'mean', 'std'}"):
    G.loss(model, _tokens(jax.random.key(0)), jnp.array([0, 1]), rng=jax.random.key(0))
  with pytest.raises(ValueError, match=r"layout must be \(2, 8, 5\)"):
    model.velocity(x, jnp.zeros(2), None, la[:, :4])


def test_guidance_only_inside_the_interval(model):
  x, l = jax.random.normal(jax.random.key(0), (2, S, D)), _layout(jax.random.key(1))
  y = jnp.array([0, 2])

  @jax.jit
  def run(x):
    fn = G.guided_velocity(model, y, l, cfg_scale=3.0, guidance_low=0.2, guidance_high=0.9)
    c = lambda t: model.velocity(x, jnp.full((2,), t), y, l)
    u = lambda t: model.velocity(x, jnp.full((2,), t), jnp.array([-1, -1]), l)
    ts = [jnp.float32(v) for v in (0.1, 0.95, 0.5)]
    return [fn(x, t) for t in ts], [c(t) for t in ts], [u(t) for t in ts]

  g, c, u = run(x)
  np.testing.assert_allclose(g[0], c[0], atol=1e-5)  # t < guidance_low: conditional only
  np.testing.assert_allclose(g[1], c[1], atol=1e-5)  # t > guidance_high
  np.testing.assert_allclose(g[2], u[2] + 3.0 * (c[2] - u[2]), atol=1e-4)
  assert float(jnp.abs(c[2] - u[2]).max()) > 1e-3  # the class matters, so the test can fail


def test_sde_two_steps_by_hand():
  x0 = jax.random.normal(jax.random.key(0), (3, 4))
  rng = jax.random.key(1)
  vel = lambda x, t: 0.5 * x + t
  out = sit_sde.sample(vel, x0, rng, steps=2)
  t0, t1 = np.float32(1e-3), np.float32(0.96)
  dt = t1 - t0
  w = jax.random.normal(jax.random.fold_in(rng, 0), x0.shape)
  x = np.asarray(x0)
  x = x + (2 * (0.5 * x + t0) - x / t0) * dt + np.sqrt(2 * (1 - t0) / t0 * dt) * np.asarray(w)
  want = x + (2 * (0.5 * x + t1) - x / t1) * 0.04
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(sit_sde.grid(250))[[0, 1, -1]], [1e-3, 1e-3 + 0.959 / 249, 0.96],
                             rtol=1e-6)
  with pytest.raises(ValueError, match="steps must be >= 2"):
    sit_sde.sample(vel, x0, rng, steps=1)


def test_oracle_velocity_recovers_the_target():
  """The exact velocity of a Gaussian target N(mu, s^2) on the linear path, E[x1 - x0 | x_t], fed to
  the release's SDE (250 steps) and to the ODE. The ODE is the exact transport map x0 -> mu + s x0.
  The SDE reaches the path's marginal N(t1 mu, t1^2 s^2 + (1 - t1)^2) at t1 = 0.96; its last "Mean"
  step x + 0.04 (2 v - x / t1) is affine in x, so the samples have mean mu exactly and spread
  |a| sd(x_t1), a = 1 + 0.08 k - 0.04 / t1 with v = mu + k (x - t1 mu): SiT's mean step shrinks the
  spread (a < 1), which a sampler that did not reach the marginal would not match."""
  mu, s = 1.5, 0.1

  def oracle(x, t):
    var = t * t * s * s + (1 - t) ** 2
    return mu + (t * s * s - (1 - t)) / var * (x - t * mu)

  x0 = jax.random.normal(jax.random.key(0), (4000, 1))
  sde = np.asarray(sit_sde.sample(oracle, x0, jax.random.key(1), steps=250))
  t1 = 0.96
  var1 = t1 * t1 * s * s + (1 - t1) ** 2
  a = 1 + 0.08 * (t1 * s * s - (1 - t1)) / var1 - 0.04 / t1
  assert abs(sde.mean() - mu) < 0.01, sde.mean()
  assert abs(sde.std() / (abs(a) * np.sqrt(var1)) - 1) < 0.05, (sde.std(), a * np.sqrt(var1))
  from jaxtok.samplers import flow
  ode = np.asarray(flow.sample(lambda x, t, _: oracle(x, t), x0, steps=50, method="heun"))
  np.testing.assert_allclose(ode, mu + s * np.asarray(x0), atol=2e-3)  # the ODE is the OT map


def test_layout_bank_pops_like_the_release():
  lay = np.arange(5 * S * 5, dtype=np.float32).reshape(5, S, 5)
  bank = G.LayoutBank(lay, np.array([0, 1, 0, 1, 0]), np.zeros(D), np.ones(D), num_classes=2)
  got = [int(bank.pop(0)[0, 0]) // (S * 5) for _ in range(4)]
  assert got == [4, 2, 0, 4]  # last first, as list.pop(); an exhausted class starts over
  out = bank.labels(np.array([1, -1]))
  assert out["layout"].shape == (2, S, 5) and int(out["layout"][0, 0, 0]) // (S * 5) == 3
  assert int(out["layout"][1, 0, 0]) // (S * 5) == 4 and out["mean"].shape == (2, D)
  with pytest.raises(ValueError, match="no example of class 7"):
    bank.pop(7)


def test_config_and_constructor_refuse_bad_input():
  from jaxtok.configs import gpstoken_gen as cfg_lib
  c = cfg_lib.get_config("tiny")
  assert c.model.name == "gpstoken_gen" and c.model.token_dim == 9 and c.model.seq_len == 8
  full = cfg_lib.get_config(None)
  assert (full.model.width, full.model.depth, full.model.heads) == (1152, 28, 16)
  assert full.model.stats == "released" and full.sampling.num_steps == 250
  with pytest.raises(ValueError, match="unknown gpstoken_gen config key"):
    G.make_model(dict(c.model.to_dict(), widht=8), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="stats must be 'data' or 'released', got 'mine'"):
    G.make_model(dict(c.model.to_dict(), stats="mine"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="token_dim must be > 5"):
    G.make_model(dict(c.model.to_dict(), token_dim=5), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="released statistics have 21 channels, config.model.token_dim is 9"):
    G.released_or_data_stats("released", {}, 9, "x")
  with pytest.raises(ValueError, match="holds no 'gpstoken_stats'"):
    G.released_or_data_stats("data", {}, 9, "x")
