import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.samplers import categorical, guidance


def test_high_mode_reaches_tail_low_mode_does_not():
  rng = jax.random.key(0)
  low = jax.random.gumbel(rng, (1_000_000,), jnp.float32, mode="low")
  high = jax.random.gumbel(rng, (1_000_000,), jnp.float32, mode="high")
  assert float(low.max()) < 16.0
  # p = 1e-12 => gap of ~27.6 nats; only the high mode can cross it.
  assert float(high.max()) > 13.0


def test_temperature_zero_is_greedy_and_forbidden():
  logits = jnp.array([[0.0, 5.0, 1.0]])
  assert int(categorical.sample(jax.random.key(0), logits, temperature=0.0)[0]) == 1
  out = categorical.sample(jax.random.key(0), jnp.tile(logits, (64, 1)), forbidden_ids=(1,))
  assert not np.any(np.asarray(out) == 1)


def test_errors():
  with pytest.raises(ValueError, match="temperature"):
    categorical.sample(jax.random.key(0), jnp.zeros((1, 3)), temperature=-1.0)
  with pytest.raises(ValueError, match="top_k"):
    categorical.sample(jax.random.key(0), jnp.zeros((1, 3)), top_k=0)


def test_guidance_neutral():
  c, u = jnp.array([1.0, 2.0]), jnp.array([3.0, -1.0])
  np.testing.assert_array_equal(guidance.cfg_uncond_base(c, u, 1.0), c)
  np.testing.assert_array_equal(guidance.cfg_cond_base(c, u, 0.0), c)
  np.testing.assert_array_equal(guidance.cfg_instella(c, u, 0.0), c)
