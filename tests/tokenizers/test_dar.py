"""D-AR: the group / segment schedule by hand, the encoder mask, prefix decoding continuing the same
trajectory, previews == prefix decodes, determinism for a fixed noise key, strict config, the flow
loss falling on a fixed batch, and tools/train.py on the tiny config."""
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxtok.configs import dar as dar_config
from jaxtok.tokenizers import api, dar

KEY = functools.partial(jax.random.key, impl="rbg")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_schedule_by_hand():
  # T = 8 steps on t = i/8, G = 4: g = min(floor(4t + 1/2), 3): 0, 1, 1, 2, 2, 3, 3, 3.
  np.testing.assert_array_equal(dar.step_groups(8, 4), [0, 1, 1, 2, 2, 3, 3, 3])
  np.testing.assert_array_equal(dar.segment_ends(8, 4), [1, 3, 5, 8])
  np.testing.assert_array_equal(dar.step_groups(4, 1), [0, 0, 0, 0])
  assert int(dar.group_at(0.12, 4)) == 0 and int(dar.group_at(0.13, 4)) == 1
  assert int(dar.group_at(1.0, 4)) == 3
  np.testing.assert_array_equal(dar.group_at(jnp.array([0.0, 0.4, 0.99]), 4), [0, 2, 3])
  with pytest.raises(ValueError, match="num_groups must divide num_tokens=8, got 3"):
    dar.check_schedule(8, 3, 8)
  with pytest.raises(ValueError, match=r"num_steps=2 leaves group\(s\) \[1, 3\]"):
    dar.check_schedule(8, 4, 2)
  m = dar.encoder_mask(2, 2)   # [p0, p1, q0, q1]
  np.testing.assert_array_equal(m, [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])


@pytest.fixture(scope="module")
def tiny():
  from tests.tools.conftest import random_like
  config = dar_config.get_config("tiny")
  tok = api.build(config.model)
  # Random values (a jitted nnx init costs a long compile here); heads non-zero so velocities move.
  return tok, random_like(tok.abstract_params(), seed=0, scale=0.3)


@pytest.mark.slow
def test_prefix_decoding_continues_the_same_trajectory(tiny):
  tok, params = tiny
  images = jax.random.uniform(KEY(1), (2, 16, 16, 3))
  noise = jax.random.normal(KEY(2), (2, 16, 16, 3))

  @jax.jit
  def run(params, images, noise):
    m = tok.model(params)
    tokens = m.encode(images).tokens
    full = m.denoise(m._conds_of_tokens(tokens), noise)
    two = m.denoise(m._conds_of_tokens(tokens[:, :4]), noise)
    views = dar.previews(m, tokens, noise)
    dec = m.decode(tokens[:, :4], noise=noise)
    again = m.decode(tokens[:, :4], noise=noise)
    by_key = (m.decode(tokens, rng=KEY(3)), m.decode(tokens, rng=KEY(3)), m.decode(tokens, rng=KEY(4)))
    return tokens, full, two, views, dec, again, by_key

  tokens, full, two, views, dec, again, by_key = run(params, images, noise)
  assert tokens.shape == (2, 8) and tokens.dtype == jnp.int32 and int(tokens.max()) < 200
  assert full.segment_end.shape == (4, 2, 16, 16, 3) and two.segment_end.shape == (2, 2, 16, 16, 3)
  # The state at the end of segments 0 and 1 is the same with 2 groups or all 4.
  np.testing.assert_allclose(two.segment_end, full.segment_end[:2], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(full.segment_end[-1], full.final, atol=0)
  assert not np.allclose(two.final, full.final, atol=1e-3)   # later groups change the rest
  # Previews: entry g is the decode of groups 0..g; the last one the full decode.
  assert views.shape == (4, 2, 16, 16, 3)
  np.testing.assert_allclose(views[1], dec, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(views[3], jnp.clip((full.final + 1) / 2, 0, 1), rtol=1e-5, atol=1e-5)
  # Deterministic for fixed noise / a fixed key; another key gives another image.
  np.testing.assert_array_equal(dec, again)
  np.testing.assert_array_equal(by_key[0], by_key[1])
  assert not np.allclose(by_key[0], by_key[2])
  with pytest.raises(ValueError, match=r"tokens must be \[B, K'\] with K' a multiple of the group size 2"):
    tok.model(params).decode(tokens[:, :3])


@pytest.mark.slow
def test_flow_loss_falls_on_a_fixed_batch(tiny):
  tok, params = tiny
  images = jax.random.uniform(KEY(5), (4, 16, 16, 3))
  tx = optax.adam(3e-3)

  @jax.jit
  def steps(params):
    def loss(p):
      return tok.model(p).train_forward(images, rng=KEY(6)).losses["flow"]

    def body(carry, _):
      p, s = carry
      value, g = jax.value_and_grad(loss)(p)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), value

    _, values = jax.lax.scan(body, (params, tx.init(params)), None, length=12)
    return values

  values = np.asarray(steps(params))
  assert np.all(np.isfinite(values)) and values[-1] < 0.8 * values[0], values


def test_config_is_strict():
  cfg = dar_config.get_config("tiny")
  cfg.model.groups = 2
  with pytest.raises(ValueError, match="groups"):
    dar.make_model(cfg.model, rngs=nnx.Rngs(0))
  cfg = dar_config.get_config("tiny")
  cfg.model.num_steps = 2
  with pytest.raises(ValueError, match=r"num_steps=2 leaves group\(s\)"):
    api.build(cfg.model)


@pytest.mark.slow
def test_tools_train_runs_the_tiny_config(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "tools", "train.py"), "--config",
       os.path.join(ROOT, "configs", "dar.py") + ":tiny", "--workdir", str(tmp_path / "run"),
       "--config.total_steps=2", "--config.eval_every=100", "--config.final_eval=False",
       "--config.data.device_prefetch=0"],
      env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  assert os.path.isdir(tmp_path / "run" / "checkpoints" / "2")
