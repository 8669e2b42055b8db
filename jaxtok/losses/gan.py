"""GAN losses: hinge, non-saturating, LeCAM (Tseng et al. 2021), schedule.

Logits have any shape (e.g. a PatchGAN map [B, h, w, 1]); means are over all
entries. Math in float32.
"""

import jax
import jax.numpy as jnp


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def hinge_d_loss(real_logits, fake_logits):
  """0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake))). Returns scalar."""
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - _f32(real_logits)))
                + jnp.mean(jax.nn.relu(1.0 + _f32(fake_logits))))


def hinge_g_loss(fake_logits):
  """-mean(fake). Returns scalar."""
  return -jnp.mean(_f32(fake_logits))


def non_saturating_g_loss(fake_logits):
  """mean(softplus(-fake)) = -mean(log sigmoid(fake)). Returns scalar."""
  return jnp.mean(jax.nn.softplus(-_f32(fake_logits)))


def lecam_update(ema_state, real_logits, fake_logits, *, decay=0.999):
  """New EMA state {'real', 'fake'} of the mean real/fake logits (pure)."""
  r = jnp.mean(_f32(jax.lax.stop_gradient(real_logits)))
  f = jnp.mean(_f32(jax.lax.stop_gradient(fake_logits)))
  return {"real": decay * _f32(ema_state["real"]) + (1 - decay) * r,
          "fake": decay * _f32(ema_state["fake"]) + (1 - decay) * f}


def lecam_loss(real_logits, fake_logits, ema_state):
  """mean(relu(real - ema_fake)^2) + mean(relu(ema_real - fake)^2)."""
  return (jnp.mean(jax.nn.relu(_f32(real_logits) - ema_state["fake"]) ** 2)
          + jnp.mean(jax.nn.relu(ema_state["real"] - _f32(fake_logits)) ** 2))


def gan_weight(step, start_step, weight):
  """`weight` from `start_step` on, 0 before; jittable in `step`."""
  return jnp.where(jnp.asarray(step) >= start_step, jnp.float32(weight), 0.0)
