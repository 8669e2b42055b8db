"""The jitted train step: sharded (8 fake devices) equals single-device, one trace, GAN branch."""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxtok import sharding as shd
from jaxtok.train import optim
from jaxtok.train import state as state_lib
from jaxtok.train import step as step_lib


class Out(NamedTuple):
  recon: jax.Array
  losses: dict
  metrics: dict


class TinyAE(nnx.Module):
  """A 2-layer patch autoencoder with a latent-token parameter and a non-parameter counter."""

  def __init__(self, *, rngs):
    init = nnx.initializers.lecun_normal()
    self.enc = nnx.Linear(12, 16, kernel_init=shd.logical_init(init, "patch", "embed"), rngs=rngs)
    self.dec = nnx.Linear(16, 12, kernel_init=shd.logical_init(init, "embed", "patch"), rngs=rngs)
    self.latent_tokens = nnx.Param(jnp.ones((4, 16)) * 0.01)
    self.norm = nnx.LayerNorm(16, rngs=rngs)
    self.calls = nnx.Variable(jnp.zeros((), jnp.int32))

  def train_forward(self, images, *, rng, num_tokens=None):
    b, h, w, c = images.shape
    x = images.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, 12)
    z = self.norm(self.enc(x)) + self.latent_tokens[...].mean(0)
    noise = 0.01 * jax.random.normal(rng, z.shape)
    y = self.dec(z + noise)
    recon = y.reshape(b, h // 2, w // 2, 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
    self.calls[...] = self.calls[...] + 1
    return Out(recon, {"reg": 0.1 * jnp.mean(jnp.square(z))}, {"zmean": jnp.mean(z)})


class TinyDisc(nnx.Module):

  def __init__(self, *, rngs):
    self.lin = nnx.Linear(3, 1, rngs=rngs)

  def __call__(self, images):
    return self.lin(images)[..., 0]


def _setup(mesh, *, disc=False, ema=0.0, counter=None):
  model = state_lib.model_def(lambda rngs: TinyAE(rngs=rngs))
  tx = optim.make_optimizer(base_lr=1e-2, total_steps=10, warmup_steps=2, weight_decay=1e-2)
  d = state_lib.model_def(lambda rngs: TinyDisc(rngs=rngs)) if disc else None
  d_tx = optim.make_optimizer(base_lr=1e-2, total_steps=10) if disc else None
  init_fn = state_lib.make_init_fn(model, tx, ema=ema > 0, disc=d, disc_tx=d_tx)
  rules = shd.DEFAULT_RULES
  state, shardings, _ = state_lib.init_train_state(init_fn, jax.random.key(0), mesh, rules)
  loss = {"l1": 1.0, "l2": 0.5, "gan": 0.1 if disc else 0.0, "gan_start": 1, "lecam": 0.01}
  step = step_lib.make_train_step(model, loss, tx, state_shardings=shardings, ema_decay=ema, disc=d,
                                  disc_tx=d_tx, on_trace=counter,
                                  lr_schedule=optim.warmup_cosine(base_lr=1e-2, total_steps=10,
                                                                  warmup_steps=2))
  return state, step


def _batch(mesh, n=8):
  x = jax.random.uniform(jax.random.key(1), (n, 4, 4, 3))
  return jax.device_put(x, shd.batch_sharding(mesh, 4))


def test_sharded_step_equals_single_device():
  disc = True
  results = []
  for mesh in (shd.make_mesh((("data", 2), ("fsdp", 4), ("tensor", 1))),
               shd.make_mesh((("data", 1), ("fsdp", 1), ("tensor", 1)), jax.devices()[:1])):
    state, step = _setup(mesh, disc=disc, ema=0.9)
    batch = _batch(mesh)
    d0 = jax.device_get(state["disc_params"])
    state, metrics = step(state, batch, jax.random.key(3))
    # gan_start=1: at step 0 the discriminator stays as initialised and the GAN term is 0.
    jax.tree.map(np.testing.assert_array_equal, d0, jax.device_get(state["disc_params"]))
    assert float(metrics["disc/active"]) == 0.0 and float(metrics["loss/gan_g"]) == 0.0
    state, metrics = step(state, batch, jax.random.key(3))
    assert not np.allclose(d0["lin"]["kernel"][...],
                           jax.device_get(state["disc_params"]["lin"]["kernel"][...]))
    results.append((jax.device_get(state), jax.device_get(metrics), state))
  (s8, m8, sharded), (s1, m1, _) = results
  # FSDP: the embed axis of the encoder kernel is split over the 4 fsdp devices.
  assert sharded["params"]["enc"]["kernel"][...].sharding.spec == P(None, "fsdp")
  assert sharded["opt_state"][1][0].mu["enc"]["kernel"][...].sharding.spec == P(None, "fsdp")
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), s8, s1)
  assert int(s8["step"]) == 2 and int(s8["model_state"]["calls"][...]) == 2
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  if disc:
    # gan_start=1: the discriminator is frozen at step 0 and trained at step 1.
    assert float(m8["disc/active"]) == 1.0


def test_step_traces_once_and_changes_params():
  mesh = shd.make_mesh((("data", 8), ("fsdp", 1), ("tensor", 1)))
  count = []
  state, step = _setup(mesh, counter=lambda: count.append(1))
  before = jax.device_get(state["params"]["dec"]["kernel"][...])
  batch = _batch(mesh)
  for _ in range(3):
    state, metrics = step(state, batch, jax.random.key(3))
  assert len(count) == 1
  assert int(state["step"]) == 3
  assert not np.allclose(before, jax.device_get(state["params"]["dec"]["kernel"][...]))
  # lr at step 2 (the metrics of the 3rd step) is the peak of the warmup.
  np.testing.assert_allclose(float(metrics["lr"]), 1e-2, rtol=1e-6)
  assert np.isfinite(float(metrics["loss"]))


def test_loss_pieces_hand_values():
  real = jnp.array([2.0, 0.0]); fake = jnp.array([-2.0, 0.5])
  # relu(1-2)=0, relu(1-0)=1 -> 0.5 ; relu(1-2)=0, relu(1.5)=1.5 -> 0.75 ; half of the sum.
  np.testing.assert_allclose(step_lib.hinge_d_loss(real, fake), 0.5 * (0.5 + 0.75))
  ema = {"real": jnp.array(1.0), "fake": jnp.array(-1.0)}
  # relu(real - (-1))^2 = [9, 1] -> 5 ; relu(1 - fake)^2 = [9, 0.25] -> 4.625
  np.testing.assert_allclose(step_lib.lecam_penalty(real, fake, ema), 5 + 4.625)
  assert float(step_lib.gan_weight(jnp.array(4), start=5, weight=0.1)) == 0.0
  np.testing.assert_allclose(float(step_lib.gan_weight(jnp.array(5), start=5, weight=0.1)), 0.1)


def test_bad_loss_config_raises():
  mesh = shd.make_mesh((("data", 8), ("fsdp", 1), ("tensor", 1)))
  model = state_lib.model_def(lambda rngs: TinyAE(rngs=rngs))
  tx = optim.make_optimizer(base_lr=1e-2, total_steps=10)
  with pytest.raises(ValueError, match="l1"):
    step_lib.make_train_step(model, {"l1": -1.0}, tx, state_shardings=None)
  with pytest.raises(ValueError, match="discriminator"):
    step_lib.make_train_step(model, {"gan": 0.1}, tx, state_shardings=None)
  with pytest.raises(ValueError, match="teacher"):
    step_lib.make_train_step(model, {"proxy": 1.0}, tx, state_shardings=None)
