"""Layton: the consistency function's boundary condition, 1-step decoding == the one-step function,
deterministic multistep sampling, LCM's schedule values, the CT loss's definition, the EMA target,
and the tiny config's falling loss through the training loop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.configs import layton as layton_config
from jaxtok.samplers import consistency
from jaxtok.tokenizers import api, layton
from tests.tokenizers.fit import fixed_batch_losses


def _build(**over):
  """(tokenizer, params, images): configs/layton.py:tiny (+ `over`) with random parameters."""
  c = layton_config.get_config("tiny")
  c.model.update(over)
  tok = api.build(c.model)
  # Random values instead of the initialiser (its compile costs more than the tests), so the
  # zero-initialised adaLN heads are non-zero and F is not constant.
  rs = np.random.default_rng(0)
  params = jax.tree.map(lambda a: jnp.asarray(0.1 * rs.normal(size=a.shape), a.dtype),
                        tok.abstract_params())
  images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
  return tok, params, images


@pytest.fixture(scope="module")
def tiny():
  """The tiny config's model (frozen f2 VAE, 4 latent channels on an 8 x 8 grid)."""
  return _build()


@pytest.fixture(scope="module")
def tiny_pixels():
  """The tiny model without the VAE (pixels in [-1, 1] as latents): cheaper to compile."""
  return _build(use_vae=False)


def test_schedule_and_boundary_coefficients_hand_values():
  ab = consistency.scaled_linear_alphas_cumprod()
  assert ab.shape == (1000,) and ab.dtype == np.float32
  np.testing.assert_allclose(ab[0], 1 - 0.00085, rtol=1e-6)
  np.testing.assert_allclose(ab[-1], 0.0046600, rtol=1e-3)  # SD's abar_999
  c_skip, c_out = consistency.boundary_coefficients(jnp.array([0, 19, 999]))
  assert float(c_skip[0]) == 1.0 and float(c_out[0]) == 0.0
  np.testing.assert_allclose(c_skip[1:], 0.25 / (np.array([190.0, 9990.0])**2 + 0.25), rtol=1e-6)
  np.testing.assert_allclose(c_out[1:], np.array([190.0, 9990.0]) / np.sqrt(
      np.array([190.0, 9990.0])**2 + 0.25), rtol=1e-6)
  assert tuple(consistency.origin_timesteps()[:3]) == (19, 39, 59)
  assert consistency.inference_timesteps(1) == (999,)
  assert consistency.inference_timesteps(2) == (999, 499)
  assert consistency.inference_timesteps(4) == (999, 759, 519, 279)
  with pytest.raises(ValueError, match="num_steps must be in"):
    consistency.inference_timesteps(0)


def test_sampler_one_step_is_the_function_and_two_steps_renoise():
  fn = lambda x, t: 0.5 * x + t[:, None].astype(jnp.float32)
  x = jnp.arange(6.0).reshape(2, 3)
  ab = consistency.scaled_linear_alphas_cumprod()
  rng = jax.random.key(3)
  np.testing.assert_array_equal(consistency.sample(fn, x, (999,), rng, ab), fn(x, jnp.full((2,), 999)))
  z = jax.random.normal(jax.random.fold_in(rng, 0), x.shape)
  x0 = fn(x, jnp.full((2,), 999))
  x1 = np.sqrt(ab[499]) * x0 + np.sqrt(1 - ab[499]) * z
  np.testing.assert_allclose(consistency.sample(fn, x, (999, 499), rng, ab),
                             fn(x1, jnp.full((2,), 499)), rtol=1e-6)
  with pytest.raises(ValueError, match="strictly descending"):
    consistency.sample(fn, x, (10, 20), rng, ab)


def test_boundary_condition_is_exact_identity(tiny_pixels):
  tok, params, _ = tiny_pixels
  graphdef = tok.graphdef
  x = jax.random.normal(jax.random.key(4), (2, 16, 16, 3))
  codes = jax.random.normal(jax.random.key(5), (2, 8, 8))
  f = jax.jit(lambda x, t, c: nnx.merge(graphdef, params).consistency_fn(x, t, c))
  np.testing.assert_array_equal(f(x, jnp.zeros((2,), jnp.int32), codes), x)
  # Away from the boundary the network matters.
  assert float(jnp.max(jnp.abs(f(x, jnp.full((2,), 999), codes) - x))) > 1e-3


def test_one_step_decode_equals_the_one_step_function_and_multistep_is_deterministic(tiny_pixels):
  tok, params, _ = tiny_pixels
  tokens = jax.random.randint(jax.random.key(10), (2, 8), 0, 64)
  noise = jax.random.normal(jax.random.key(6), (2, 16, 16, 3))

  @jax.jit
  def both(params, noise):
    m = nnx.merge(tok.graphdef, params)
    one = m.decode(tokens, noise=noise, num_steps=1)
    f = m.consistency_fn(noise, jnp.full((2,), 999, jnp.int32), m.tokens_to_codes(tokens))
    return one, m.latents_to_images(f)

  one, expect = both(params, noise)
  np.testing.assert_array_equal(one, expect)
  assert one.shape == (2, 16, 16, 3) and one.dtype == jnp.float32
  a = tok.decode(params, tokens, rng=jax.random.key(7), num_steps=3)
  b = tok.decode(params, tokens, rng=jax.random.key(7), num_steps=3)
  c = tok.decode(params, tokens, rng=jax.random.key(8), num_steps=3)
  np.testing.assert_array_equal(a, b)
  assert float(jnp.max(jnp.abs(a - c))) > 0
  with pytest.raises(ValueError, match="all 8 tokens"):
    tok.decode(params, tokens[:, :4])


@pytest.mark.slow
def test_train_forward_loss_definition_and_target_ema(tiny_pixels):
  tok, params, images = tiny_pixels
  model = tok.model(params)
  graphdef, state = nnx.split(model)
  target_before = nnx.state(model.target_decoder, layton.ConsistencyTarget).to_pure_dict()
  online = nnx.state(model.decoder, nnx.Param).to_pure_dict()
  # At init the target equals the online network (the test's head noise went to the online heads).
  rng = jax.random.key(9)

  @jax.jit
  def run(state):
    m = nnx.merge(graphdef, state)
    out = m.train_forward(images, rng=rng)
    return out, nnx.state(m)

  out, new_state = run(state)
  assert out.recon.shape == (2, 16, 16, 3) and set(out.losses) >= {"consistency", "commitment"}
  # The consistency loss by its definition, from the same draws.
  k_q, k_ct, _, _ = jax.random.split(rng, 4)
  x0 = model.images_to_latents(images)
  codes = jax.jit(lambda: model.encode(images).codes)()
  k_n, k_eps = jax.random.split(k_ct)
  t_hi = jnp.asarray(consistency.origin_timesteps())[jax.random.randint(k_n, (2,), 0, 50)]
  t_lo = jnp.maximum(t_hi - 20, 0)
  eps = jax.random.normal(k_eps, x0.shape)
  ab = consistency.scaled_linear_alphas_cumprod()
  noisy = lambda t: np.sqrt(ab[t])[:, None, None, None] * x0 + np.sqrt(1 - ab[t])[:, None, None, None] * eps
  f = jax.jit(lambda x, t, c, target: model.consistency_fn(x, t, c, target=target),
              static_argnames="target")
  d = f(noisy(t_hi), t_hi, codes, False) - f(noisy(t_lo), t_lo, codes, True)
  expect = np.mean(np.sqrt(np.square(d) + 1e-6) - 1e-3)
  np.testing.assert_allclose(out.losses["consistency"], expect, rtol=2e-4, atol=1e-7)
  # theta- <- 0.95 theta- + 0.05 theta.
  new_target = nnx.merge(graphdef, new_state).target_decoder
  got = nnx.state(new_target, layton.ConsistencyTarget).to_pure_dict()
  jax.tree.map(lambda g, t, p: np.testing.assert_allclose(g, 0.95 * t + 0.05 * p, rtol=1e-6, atol=1e-7),
               got, target_before, online)
  # The target is model state, not parameters: the optimizer never sees it.
  assert not any("target_decoder" in k for k in api.param_shapes(nnx.state(model, nnx.Param)))


def test_bad_inputs_raise_naming_the_argument():
  with pytest.raises(ValueError, match="unknown Layton config key"):
    layton.make_model(dict(name="layton", image_size=16, bogus=1), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="prediction must be one of"):
    nnx.eval_shape(lambda: layton.make_model(dict(layton_config.get_config("tiny").model,
                                                  prediction="v"), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="train_steps must be in"):
    nnx.eval_shape(lambda: layton.make_model(dict(layton_config.get_config("tiny").model,
                                                  train_steps=5), rngs=nnx.Rngs(0)))


@pytest.mark.slow
def test_tiny_config_loss_falls_on_a_fixed_batch(tiny):
  """The tiny config's model (the tiny training recipe's Adam on l1 + model losses) fits one batch:
  the same-rng loss falls. (tools/train.py with configs/layton.py:tiny runs the same contract.)"""
  tok, params = tiny[:2]
  images = jnp.asarray(np.random.default_rng(12).uniform(size=(4, 16, 16, 3)), jnp.float32)
  losses, final = fixed_batch_losses(tok, params, images, 25)
  assert np.all(np.isfinite(losses))
  assert losses[-3:].mean() < 0.5 * losses[:3].mean(), losses
  # The VAE is frozen: its weights get zero gradients, so Adam leaves them bitwise unchanged.
  vae_before, vae_after = params["vae"], final["vae"]
  jax.tree.map(np.testing.assert_array_equal, vae_before, vae_after)
