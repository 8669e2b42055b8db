"""The improved-DDPM pieces of MAR's / MaskGen-KL's DiffLoss: schedule and respacing by hand, the
hybrid loss at a perfect head, and the ancestral sampler's exactness and guidance."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.samplers import ddpm


def test_cosine_betas_and_respacing_by_hand():
  abar = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
  want = [min(1 - abar((i + 1) / 4) / abar(i / 4), 0.999) for i in range(4)]
  np.testing.assert_allclose(ddpm.cosine_betas(4), want, rtol=1e-12)
  assert ddpm.cosine_betas(4)[-1] == 0.999  # alpha_bar(1) = 0: clipped
  assert ddpm.space_timesteps(10, "4") == [0, 3, 6, 9]  # stride 9 / 3
  kept = ddpm.space_timesteps(1000, "100")
  assert len(kept) == 100 and kept[:3] == [0, 10, 20] and kept[-1] == 999
  assert ddpm.space_timesteps(20, "2,3") == [0, 9, 10, 14, 19]
  assert ddpm.space_timesteps(10, "ddim5") == [0, 2, 4, 6, 8]
  full, spaced = ddpm.make(1000), ddpm.make(1000, "100")
  # Respacing keeps alpha_bar at the kept steps (the betas in between are merged).
  np.testing.assert_allclose(spaced.sqrt_alphas_cumprod, full.sqrt_alphas_cumprod[kept], rtol=1e-6)
  np.testing.assert_array_equal(spaced.timestep_map, kept)
  # The posterior at step 0 is exact (x_{-1} = x0): coef1 = 1, coef2 = 0.
  assert (spaced.posterior_mean_coef1[0], spaced.posterior_mean_coef2[0]) == (1.0, 0.0)
  for bad, match in (("0", "cannot take 0"), ("ddim7", "no integer stride"), ("x", "like '100'")):
    with pytest.raises(ValueError, match=match):
      ddpm.space_timesteps(10, bad)


def test_hybrid_loss_terms_at_a_perfect_and_a_zero_head():
  d = ddpm.make(1000, "50")
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.uniform(-0.9, 0.9, (6, 3)), jnp.float32)
  noise = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
  t = jnp.asarray([0, 1, 5, 17, 33, 49], jnp.int32)
  z = jnp.zeros((6, 2))
  # The true eps and v = -1 (the posterior's own variance): mse 0 and KL 0 for t > 0.
  perfect = lambda x_t, tt, zz: jnp.concatenate([noise, -jnp.ones_like(noise)], -1)
  terms = ddpm.loss_terms(perfect, d, x0, z, jax.random.key(0), t=t, noise=noise)
  np.testing.assert_allclose(np.asarray(terms["mse"]), 0.0, atol=1e-12)
  np.testing.assert_allclose(np.asarray(terms["vb"][1:]), 0.0, atol=2e-4)
  # t = 0: the decoder NLL in bits of the 2/255 bin around x0 under N(x0, posterior variance).
  sigma = math.exp(0.5 * float(d.posterior_log_variance_clipped[0]))
  phi = lambda u: 0.5 * (1 + math.erf(u / math.sqrt(2)))
  bits = -math.log2(phi(1 / 255 / sigma) - phi(-1 / 255 / sigma))
  np.testing.assert_allclose(float(terms["vb"][0]), bits, rtol=2e-3)
  zero = lambda x_t, tt, zz: jnp.zeros(x_t.shape[:1] + (6,))
  terms = ddpm.loss_terms(zero, d, x0, z, jax.random.key(0), t=t, noise=noise)
  np.testing.assert_allclose(np.asarray(terms["mse"]), np.mean(np.asarray(noise) ** 2, -1), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(terms["loss"]), np.asarray(terms["mse"] + terms["vb"]))
  # The head sees the original step index of each kept step.
  seen = []
  spy = lambda x_t, tt, zz: (seen.append(tt), jnp.zeros(x_t.shape[:1] + (6,)))[1]
  ddpm.loss_terms(spy, d, x0, z, jax.random.key(0), t=t, noise=noise)
  np.testing.assert_array_equal(np.asarray(seen[0]), d.timestep_map[np.asarray(t)])


def _point_mass_head(d_full, target):
  """eps of x_t for data that is always `target` [M, D] (exact x0 prediction)."""
  def head(x_t, tt, z):
    a = jnp.asarray(d_full.sqrt_alphas_cumprod)[tt][:, None]
    s = jnp.asarray(d_full.sqrt_one_minus_alphas_cumprod)[tt][:, None]
    eps = (x_t - a * target) / s
    return jnp.concatenate([eps, jnp.zeros_like(eps)], -1)
  return head


def test_ancestral_sampler_recovers_a_point_mass_and_guidance_is_eps_cfg():
  d_full, d = ddpm.make(1000), ddpm.make(1000, "20")
  target = jnp.asarray([[0.5, -1.0, 2.0], [0.0, 0.3, -0.7]], jnp.float32)
  z = jnp.zeros((2, 4))
  run = jax.jit(lambda key, temp: ddpm.sample(_point_mass_head(d_full, target), d, z, key,
                                              token_dim=3, temperature=temp))
  for temp in (0.0, 1.0):  # the last step adds no noise and its mean is the predicted x0
    np.testing.assert_allclose(np.asarray(run(jax.random.key(1), temp)), np.asarray(target),
                               atol=1e-4)
  # A head linear in z: guidance u + s (c - u) on eps equals the unguided run at that combined z.
  w = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
  lin = lambda x, tt, zz: jnp.concatenate([0.1 * x + zz @ w, jnp.tanh(x)], -1)
  zc, zu = jnp.ones((2, 4)), jnp.asarray([[0.5, -1, 0, 2], [1, 1, 1, 1]], jnp.float32)
  guided = ddpm.sample(lin, d, zc, jax.random.key(2), token_dim=3, z_uncond=zu, cfg_scale=2.5)
  mixed = ddpm.sample(lin, d, zu + 2.5 * (zc - zu), jax.random.key(2), token_dim=3)
  np.testing.assert_allclose(np.asarray(guided), np.asarray(mixed), rtol=1e-5)
  neutral = ddpm.sample(lin, d, zc, jax.random.key(2), token_dim=3, z_uncond=zu, cfg_scale=1.0)
  plain = ddpm.sample(lin, d, zc, jax.random.key(2), token_dim=3)
  np.testing.assert_allclose(np.asarray(neutral), np.asarray(plain), rtol=1e-6)
  with pytest.raises(ValueError, match="temperature"):
    ddpm.sample(lin, d, zc, jax.random.key(2), token_dim=3, temperature=-1.0)
