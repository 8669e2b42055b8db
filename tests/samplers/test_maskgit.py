import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.samplers import maskgit, schedules

V, K, MASK = 5, 12, 5


def test_counts_ties_known_kept():
  logits_fn = lambda t: jnp.zeros(t.shape + (V + 1,))  # constant logits: all ties
  tok = jnp.full((3, K), MASK, jnp.int32).at[:, 0].set(2)
  f = jax.jit(lambda r, t: maskgit.sample(r, logits_fn, t, mask_id=MASK, steps=4))
  out, counts = f(jax.random.key(0), tok)
  expect = np.minimum(schedules.mask_counts("cosine", K, 4), K - 1)
  np.testing.assert_array_equal(np.asarray(counts)[:, 0], expect)
  assert not np.any(np.asarray(out) == MASK)
  assert np.all(np.asarray(out)[:, 0] == 2)
  out2, _ = f(jax.random.key(0), tok)
  np.testing.assert_array_equal(out, out2)
