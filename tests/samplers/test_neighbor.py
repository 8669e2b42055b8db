"""The next-neighbour sampler with a model-free callable: diagonal d is written where the distance is
d, one call per diagonal, the fed-back tokens are the previous diagonal, argument errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.generators import nar
from jaxtok.samplers import neighbor


@pytest.mark.parametrize("h,w", [(3, 3), (2, 4), (4, 1)])
def test_tokens_land_on_their_diagonal(h, w):
  vocab, b = 16, 2
  diag = nar.diagonals(h, w)
  seen = []

  def prefill(prompt, cache):
    return jax.nn.one_hot(jnp.zeros((prompt.shape[0],), jnp.int32), vocab) * 50.0, cache

  def step(tokens, d, cache):
    # Every fed token is the previous diagonal's (= d on real entries); predict d + 1 everywhere.
    jax.debug.callback(lambda t, d: seen.append((np.asarray(t).copy(), int(d))), tokens, d)
    return jax.nn.one_hot(jnp.full(tokens.shape, d + 1), vocab) * 50.0, cache

  out = jax.jit(lambda rng: neighbor.sample(rng, prefill, step, (), jnp.zeros((b, 1), jnp.int32),
                                            diagonals=diag, temperature=0.0))(jax.random.key(0))
  np.testing.assert_array_equal(out, np.broadcast_to(nar.distance_map(h, w), (b, h * w)))
  assert [d for _, d in seen] == list(range(h + w - 2))
  assert neighbor.num_model_calls(diag) == h + w - 1
  for tokens, d in seen:
    real = diag[d] >= 0
    np.testing.assert_array_equal(tokens[:, real], d)


def test_bad_arguments():
  prompt = jnp.zeros((2, 1), jnp.int32)
  with pytest.raises(ValueError, match=r"diagonals must be an int array \[D, L\]"):
    neighbor.sample(jax.random.key(0), None, None, (), prompt, diagonals=np.arange(4))
  with pytest.raises(ValueError, match="uncond_prompt_tokens must have the prompt's shape"):
    neighbor.sample(jax.random.key(0), None, None, (), prompt, diagonals=nar.diagonals(2, 2),
                    uncond_prompt_tokens=jnp.zeros((2, 2), jnp.int32))
  with pytest.raises(ValueError, match="cfg_scale"):
    neighbor.sample(jax.random.key(0), None, None, (), prompt, diagonals=nar.diagonals(2, 2),
                    cfg_scale=float("nan"))
  with pytest.raises(ValueError, match="cfg_schedule must be one of"):
    neighbor.sample(jax.random.key(0), None, None, (), prompt, diagonals=nar.diagonals(2, 2),
                    cfg_schedule="cosine-ish")
