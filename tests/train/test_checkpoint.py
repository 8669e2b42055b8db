"""Checkpoints: sharded round trip with the data state and config, keep-N, corrupted-latest fallback."""
import glob
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxtok import sharding as shd
from jaxtok.train import checkpoint as ckpt_lib
from jaxtok.train import optim
from jaxtok.train import state as state_lib


class Net(nnx.Module):

  def __init__(self, rngs):
    init = nnx.initializers.normal(1.0)
    self.w = nnx.Linear(8, 16, kernel_init=shd.logical_init(init, "mlp", "embed"), rngs=rngs)
    self.codebook = nnx.Param(jnp.arange(12.0).reshape(4, 3))


def _init(mesh):
  model = state_lib.model_def(lambda rngs: Net(rngs))
  tx = optim.make_optimizer(base_lr=1e-3, total_steps=10)
  init_fn = state_lib.make_init_fn(model, tx, ema=True)
  return init_fn, state_lib.init_train_state(init_fn, jax.random.key(0), mesh)


def _bump(state, k):
  return jax.tree.map(lambda x: x + k if jnp.issubdtype(x.dtype, jnp.floating) else x + k, state)


def test_round_trip_into_target_shardings(tmp_path):
  mesh = shd.make_mesh((("data", 2), ("fsdp", 4), ("tensor", 1)))
  init_fn, (state, shardings, abstract) = _init(mesh)
  ck = ckpt_lib.Checkpointer(str(tmp_path / "ckpt"), keep=2)
  data_state = {"next_index": 17, "blob": b"\x00\xffgrain"}
  for s in (1, 2, 3):
    ck.save(s, _bump(state, s), data_state=dict(data_state, step=s), config={"name": "tiny", "lr": 0.1})
  ck.wait()
  assert ck.all_steps() == [2, 3]  # keep=2
  restored, data, step = ck.restore(abstract)
  assert step == 3 and data == dict(data_state, step=3)
  expected = jax.device_get(_bump(state, 3))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), expected)
  k = restored["params"]["w"]["kernel"][...]
  assert k.sharding == shardings["params"]["w"]["kernel"].get_value() and k.sharding.spec[1] == "fsdp"
  _, _, cfg = ck.restore_step(2, abstract)
  assert cfg == {"name": "tiny", "lr": 0.1}
  # A different mesh: restore straight into the new shardings.
  mesh2 = shd.make_mesh((("data", 1), ("fsdp", 8), ("tensor", 1)))
  abstract2, sh2 = state_lib.abstract_train_state(init_fn, jax.random.key(0), mesh2)
  restored2, _, _ = ck.restore(abstract2)
  assert restored2["params"]["w"]["kernel"][...].sharding == sh2["params"]["w"]["kernel"].get_value()
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored2), expected)
  ck.close()


def test_corrupted_latest_falls_back(tmp_path, caplog):
  mesh = shd.make_mesh((("data", 8), ("fsdp", 1), ("tensor", 1)))
  _, (state, _, abstract) = _init(mesh)
  root = str(tmp_path / "ckpt")
  ck = ckpt_lib.Checkpointer(root, keep=3)
  ck.save(1, _bump(state, 1), data_state={"i": 1})
  ck.save(2, _bump(state, 2), data_state={"i": 2})
  ck.close()
  # Damage every array data file of the latest step: truncate half of them, garble the rest.
  files = [f for f in glob.glob(os.path.join(root, "2", "state", "**", "*"), recursive=True)
           if os.path.isfile(f) and os.path.getsize(f) > 0 and "_METADATA" not in f]
  assert files
  for i, f in enumerate(files):
    size = os.path.getsize(f)
    with open(f, "r+b") as fh:
      if i % 2:
        fh.truncate(size // 3)
      else:
        fh.write(os.urandom(size))
  ck = ckpt_lib.Checkpointer(root, keep=3)
  with caplog.at_level(logging.ERROR):
    restored, data, step = ck.restore(abstract)
  assert step == 1 and data == {"i": 1}
  assert any("checkpoint step 2" in r.message and "unreadable" in r.message for r in caplog.records)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(_bump(state, 1)))
  assert ck.all_steps() == [1] and os.path.isdir(root + ".corrupt/2")
  # Training may write step 2 again.
  ck.save(2, _bump(state, 5))
  ck.wait()
  assert ck.all_steps() == [1, 2]
  ck.close()


def test_empty_directory_restores_none(tmp_path):
  mesh = shd.make_mesh((("data", 8), ("fsdp", 1), ("tensor", 1)))
  _, (_, _, abstract) = _init(mesh)
  ck = ckpt_lib.Checkpointer(str(tmp_path / "none"))
  assert ck.restore(abstract) is None and ck.latest_step() is None
  ck.close()
