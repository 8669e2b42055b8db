"""Categorical sampling that keeps low-probability tails.

B: batch, V: vocabulary. float32 Gumbel noise from ``jax.random.gumbel`` (mode="low")
is capped near 15.94, so tokens whose log-probability lies more than ~16 nats below the
top one can never be drawn. ``mode="high"`` builds the noise from two float32 uniforms and
reaches far further into the tail.
"""
import jax
import jax.numpy as jnp


def sample(rng, logits, *, temperature=1.0, top_k=None, forbidden_ids=()):
  """Samples ids int32 [B] from logits [B, V] (any float dtype, math in float32)."""
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  if top_k is not None and top_k < 1:
    raise ValueError(f"top_k must be >= 1, got {top_k}")
  logits = jnp.asarray(logits, jnp.float32)
  v = logits.shape[-1]
  for i in forbidden_ids:
    if not 0 <= i < v:
      raise ValueError(f"forbidden id {i} outside vocabulary [0, {v})")
    logits = logits.at[..., i].set(-jnp.inf)
  if top_k is not None and top_k < v:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if temperature == 0:
    return jnp.argmax(logits, -1).astype(jnp.int32)
  g = jax.random.gumbel(rng, logits.shape, jnp.float32, mode="high")
  return jnp.argmax(logits / temperature + g, -1).astype(jnp.int32)
