"""MaskGIT parallel decoding (Chang et al. 2022), model-agnostic.

B: batch, K: tokens, V: vocabulary. ``logits_fn(tokens int32 [B, K]) -> logits [B, K, V]``.
Re-masking is exact bottom-k by argsort rank (ties cannot re-mask too few tokens).
"""
import jax
import jax.numpy as jnp

from jaxtok.samplers import schedules


def sample(rng, logits_fn, tokens, *, mask_id, steps, schedule="cosine",
           temperature=1.0, choice_temperature=4.5):
  """Fills every ``mask_id`` entry of tokens int32 [B, K]; returns (tokens, masked_counts [steps, B])."""
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  b, k = tokens.shape
  counts = jnp.asarray(schedules.mask_counts(schedule, k, steps))

  def body(carry, s):
    tok = carry
    masked = tok == mask_id
    logits = jnp.asarray(logits_fn(tok), jnp.float32)
    logits = logits.at[..., mask_id].set(-jnp.inf) if mask_id < logits.shape[-1] else logits
    key = jax.random.fold_in(rng, s)
    k1, k2 = jax.random.split(key)
    g = jax.random.gumbel(k1, logits.shape, jnp.float32, mode="high")
    t = jnp.maximum(temperature, 1e-6)
    sampled = jnp.argmax(logits / t + g, -1).astype(jnp.int32)
    logp = jax.nn.log_softmax(logits, -1)
    conf = jnp.take_along_axis(logp, sampled[..., None], -1)[..., 0]
    r = (s + 1.0) / steps
    conf = conf + choice_temperature * (1.0 - r) * jax.random.gumbel(k2, conf.shape, mode="high")
    conf = jnp.where(masked, conf, jnp.inf)
    new = jnp.where(masked, sampled, tok)
    rank = jnp.argsort(jnp.argsort(conf, -1), -1)
    remask = (rank < counts[s]) & masked
    new = jnp.where(remask, mask_id, new)
    return new, jnp.sum(new == mask_id, -1)

  return jax.lax.scan(body, tokens, jnp.arange(steps))
