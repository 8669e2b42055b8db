"""A user's checkpoints are never moved, overwritten or lost (issue 12, section 1).

Each test snapshots the checkpoint tree (every file's path, size and sha256) before the action and
checks it is unchanged after: a config mismatch, a reader with the wrong config, a second trainer,
damaged checkpoints and a diverging run must all leave the good checkpoints exactly as they were.
"""
import glob
import hashlib
import importlib.util
import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok import sharding as shd
from jaxtok.data import tokens as token_data
from jaxtok.train import checkpoint as ckpt_lib
from jaxtok.train import generator as gen
from jaxtok.train import loop
from jaxtok.train import optim
from jaxtok.train import state as state_lib

from tests.train.test_checkpoint import Net, _bump, _init  # noqa: F401  (shared tiny state)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def snapshot(root):
  """{relative path: (size, sha256)} of every file under root (the whole tree, incl. tmp dirs)."""
  out = {}
  for f in sorted(glob.glob(os.path.join(root, "**"), recursive=True)):
    if os.path.isfile(f):
      with open(f, "rb") as fh:
        out[os.path.relpath(f, root)] = (os.path.getsize(f), hashlib.sha256(fh.read()).hexdigest())
  return out


def _config(name, arg="tiny"):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def _mesh():
  return shd.make_mesh((("data", 8), ("fsdp", 1), ("tensor", 1)))


def _saved(tmp_path, steps=(1, 2), config=None):
  _, (state, _, abstract) = _init(_mesh())
  root = str(tmp_path / "ckpt")
  ck = ckpt_lib.Checkpointer(root, keep=5)
  for s in steps:
    ck.save(s, _bump(state, s), data_state={"i": s}, config=config or {"lr": 0.1, "ema": 0.9})
  ck.close()
  return root, state, abstract


def _damage(root, step):
  files = [f for f in glob.glob(os.path.join(root, str(step), "state", "**", "*"), recursive=True)
           if os.path.isfile(f) and os.path.getsize(f) > 0 and "_METADATA" not in f]
  assert files
  for f in files:
    with open(f, "r+b") as fh:
      fh.write(os.urandom(os.path.getsize(f)))


# ------------------------------------------------------------------------------------------------
# Checkpointer


def test_config_differences_names_fields_and_skips_cadence():
  a = {"lr": 0.1, "model": {"width": 8, "depth": 2}, "log_every": 5, "ema_decay": 0.99}
  b = {"lr": 0.1, "model": {"width": 16, "depth": 2}, "log_every": 50, "seed": 3}
  assert ckpt_lib.config_differences(a, b) == [
      "ema_decay: checkpoint 0.99, now \"<absent>\"", "model.width: checkpoint 8, now 16",
      "seed: checkpoint \"<absent>\", now 3"]
  assert ckpt_lib.config_differences(a, a) == []
  # An optional section that is off (None) equals its absence (a checkpoint written before it existed).
  assert ckpt_lib.config_differences(a, dict(a, repa=None)) == []
  assert ckpt_lib.config_differences(dict(a, repa=None), a) == []
  assert ckpt_lib.config_differences(a, dict(a, repa={"weight": 0.5})) == [
      "repa.weight: checkpoint \"<absent>\", now 0.5"]
  # List values (e.g. optim.frozen_patterns) compare too, also against absence.
  c = dict(a, optim={"frozen_patterns": ["^encoder"]})
  assert ckpt_lib.config_differences(c, c) == []
  assert ckpt_lib.config_differences(a, c) == [
      "optim.frozen_patterns: checkpoint \"<absent>\", now [\"^encoder\"]"]
  assert ckpt_lib.config_differences(c, dict(a, optim={"frozen_patterns": ["^decoder"]})) == [
      "optim.frozen_patterns: checkpoint [\"^encoder\"], now [\"^decoder\"]"]


def test_config_mismatch_is_refused_and_nothing_moves(tmp_path):
  root, state, abstract = _saved(tmp_path)
  before = snapshot(str(tmp_path))
  ck = ckpt_lib.Checkpointer(root)
  with pytest.raises(ckpt_lib.ConfigMismatchError,
                     match=r"(?s)lr: checkpoint 0.1, now 0.2.*new --workdir.*on_config_change=resume"):
    ck.restore(abstract, config={"lr": 0.2, "ema": 0.9})
  ck.close()
  assert snapshot(str(tmp_path)) == before
  # Cadence fields may change; an explicit "resume" accepts the rest.
  ck = ckpt_lib.Checkpointer(root)
  _, _, step = ck.restore(abstract, config={"lr": 0.1, "ema": 0.9, "log_every": 7})
  assert step == 2
  restored, _, step = ck.restore(abstract, config={"lr": 0.2, "ema": 0.9}, on_config_change="resume")
  assert step == 2
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(_bump(state, 2)))
  with pytest.raises(ValueError, match="on_config_change must be one of"):
    ck.restore(abstract, config={}, on_config_change="restart")
  ck.close()
  assert snapshot(str(tmp_path)) == before


def test_structure_mismatch_is_not_corruption(tmp_path):
  root, _, _ = _saved(tmp_path)
  before = snapshot(str(tmp_path))
  model = state_lib.model_def(lambda rngs: Net(rngs))
  init_fn = state_lib.make_init_fn(model, optim.make_optimizer(base_lr=1e-3, total_steps=10), ema=False)
  abstract, _ = state_lib.abstract_train_state(init_fn, jax.random.key(0), _mesh())
  for read_only in (False, True):
    ck = ckpt_lib.Checkpointer(root, read_only=read_only)
    with pytest.raises(ckpt_lib.CheckpointMismatchError,
                       match=r"ema_params.w.kernel: in the checkpoint \(8, 16\) float32, not in this"):
      ck.restore(abstract, config={"lr": 0.1, "ema": 0.9})
    ck.close()
  assert snapshot(str(tmp_path)) == before
  assert not os.path.exists(root + ".corrupt")


def test_damaged_latest_reader_moves_nothing_trainer_sets_it_aside(tmp_path, caplog):
  root, state, abstract = _saved(tmp_path)
  _damage(root, 2)
  # A half-written step of a run that is still saving: a reader must not clean it up.
  tmp_dir = os.path.join(root, "3.orbax-checkpoint-tmp-123")
  os.makedirs(os.path.join(tmp_dir, "state"))
  open(os.path.join(tmp_dir, "state", "partial"), "wb").write(b"x" * 10)
  before = snapshot(str(tmp_path))
  reader = ckpt_lib.Checkpointer(root, read_only=True)
  with caplog.at_level(logging.ERROR, logger="jaxtok.train.checkpoint"):
    restored, data, step = reader.restore(abstract)
  reader.close()
  assert step == 1 and data == {"i": 1}
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(_bump(state, 1)))
  assert snapshot(str(tmp_path)) == before
  errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
  assert len(errors) == 1 and "step 2" in errors[0].getMessage()
  assert "\n" not in errors[0].getMessage()        # one line per damaged step, no traceback
  with pytest.raises(ValueError, match="read-only"):
    reader.save(5, state)
  # The trainer sets the damaged step aside (it will write step 2 again), never deleting it.
  trainer = ckpt_lib.Checkpointer(root)
  _, _, step = trainer.restore(abstract)
  assert step == 1 and os.path.isdir(root + ".corrupt/2") and trainer.all_steps() == [1]
  trainer.close()


def test_no_readable_checkpoint_refuses_and_moves_nothing(tmp_path, caplog):
  root, _, abstract = _saved(tmp_path)
  _damage(root, 1)
  _damage(root, 2)
  before = snapshot(str(tmp_path))
  ck = ckpt_lib.Checkpointer(root)
  with caplog.at_level(logging.WARNING), pytest.raises(
      ckpt_lib.NoReadableCheckpointError,
      match=r"(?s)none of the 2 checkpoints.*step 2: .*step 1: .*Nothing was moved"):
    ck.restore(abstract)
  ck.close()
  # One log line per damaged step; orbax's own (absl) warnings are silenced. (asyncio's reports of
  # abandoned orbax futures come from another thread at garbage collection, so they are not counted
  # here; `_quiet_orbax` collects while silenced.)
  ours = [r.getMessage() for r in caplog.records if r.name.startswith("jaxtok")]
  assert len(ours) == 2 and all("\n" not in m and "unreadable" in m for m in ours), ours
  assert not [r for r in caplog.records if r.name == "absl"]
  assert snapshot(str(tmp_path)) == before


def test_read_only_on_missing_directory_creates_nothing(tmp_path):
  _, (_, _, abstract) = _init(_mesh())
  ck = ckpt_lib.Checkpointer(str(tmp_path / "absent"), read_only=True)
  assert ck.restore(abstract) is None and ck.all_steps() == []
  ck.close()
  assert not os.path.exists(tmp_path / "absent")


def test_save_finite_refuses_nan_state(tmp_path):
  root, state, abstract = _saved(tmp_path, steps=(1,))
  ck = ckpt_lib.Checkpointer(root, keep=1)
  bad = dict(state, params=jax.tree.map(lambda x: x * jnp.nan, state["params"]))
  assert ckpt_lib.nonfinite_leaves(state) == []
  assert ckpt_lib.nonfinite_leaves(bad)[0] == "params.codebook"
  with pytest.raises(FloatingPointError,
                     match=r"at step 2 .*params.codebook.*\{'loss': nan\}.*NOT saved.*step 1"):
    ckpt_lib.save_finite(ck, 2, bad, metrics={"loss": jnp.float32(jnp.nan), "lr": jnp.float32(1.0)})
  ck.close()
  assert ckpt_lib.Checkpointer(root, read_only=True).all_steps() == [1]   # keep=1 rotated nothing out


def test_workdir_lock(tmp_path):
  first = ckpt_lib.WorkdirLock(str(tmp_path))
  with pytest.raises(ckpt_lib.WorkdirBusyError, match=rf"in use by another trainer \(pid {os.getpid()}"):
    ckpt_lib.WorkdirLock(str(tmp_path))
  first.release()
  with ckpt_lib.WorkdirLock(str(tmp_path)):
    pass


# ------------------------------------------------------------------------------------------------
# The trainers


def _tiny_tokenizer_config(**over):
  c = _config("onedpiece")
  c.total_steps, c.ckpt_every, c.eval_every, c.log_every, c.final_eval = 2, 2, 100, 1, False
  c.update(over)
  return c


@pytest.mark.slow
def test_tokenizer_trainer_never_loses_checkpoints(tmp_path):
  workdir = str(tmp_path / "run")
  loop.train(_tiny_tokenizer_config(), workdir, show_progress=False)
  ckpts = os.path.join(workdir, "checkpoints")
  before = snapshot(ckpts)
  assert sorted(os.listdir(ckpts)) == ["2"]
  # 1. A changed config is refused, naming the field; nothing moves.
  with pytest.raises(ckpt_lib.ConfigMismatchError, match=r"ema_decay: checkpoint 0.9, now 0.0"):
    loop.train(_tiny_tokenizer_config(ema_decay=0.0), workdir, show_progress=False)
  # Forced through, the state structure (no EMA) still differs: refused as a mismatch, not damage.
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match=r"ema_params\..*not in this run's state"):
    loop.train(_tiny_tokenizer_config(ema_decay=0.0, on_config_change="resume"), workdir,
               show_progress=False)
  assert snapshot(ckpts) == before and not os.path.exists(ckpts + ".corrupt")
  # 2. A second trainer on the same workdir is refused before it touches anything.
  with ckpt_lib.WorkdirLock(workdir):
    with pytest.raises(ckpt_lib.WorkdirBusyError, match="in use by another trainer"):
      loop.train(_tiny_tokenizer_config(total_steps=4), workdir, show_progress=False)
  assert snapshot(ckpts) == before
  # 3. Divergence with checkpoints more frequent than the NaN guard (which only looks at log steps):
  # no non-finite state is saved, none rotates step 2 out, and the error names the step, the
  # metrics and the newest (finite) checkpoint, from which a restart resumes.
  c = _tiny_tokenizer_config(total_steps=8, ckpt_every=1, log_every=100, keep_checkpoints=8,
                             on_config_change="resume")
  c.optim.lr, c.optim.warmup_steps, c.optim.clip = 1e30, 0, 1e30
  for attempt in range(2):
    with pytest.raises(FloatingPointError) as err:
      loop.train(c, workdir, show_progress=False)
    m = re.search(r"training diverged: at step (\d+) .*'loss': nan.*NOT saved; the newest checkpoint, "
                  r"step (\d+), is finite", str(err.value))
    assert m, str(err.value)
    if attempt == 0:
      bad, last = int(m[1]), int(m[2])
      assert 2 <= last == bad - 1 < 8
    else:  # resumed from `last` and diverged at the same step again (the run is deterministic)
      assert (int(m[1]), int(m[2])) == (bad, last)
  reader = ckpt_lib.Checkpointer(ckpts, read_only=True)
  assert reader.all_steps() == list(range(2, last + 1))
  _, _, abstract = _abstract_of(c)
  for s in reader.all_steps():
    state, _, _ = reader.restore_step(s, abstract)
    assert ckpt_lib.nonfinite_leaves(state) == [], s
  reader.close()
  after = snapshot(ckpts)
  assert {k: after[k] for k in before} == before     # step 2 is untouched


def _abstract_of(config):
  from jaxtok.tokenizers import api as tok_api  # pylint: disable=g-import-not-at-top
  tokenizer = tok_api.build(config.model)
  model = state_lib.ModelDef(tokenizer.graphdef, tokenizer.init)
  tx = optim.optimizer_from_config(config.optim, int(config.total_steps))
  init_fn = state_lib.make_init_fn(model, tx, ema=config.ema_decay > 0)
  abstract, shardings = state_lib.abstract_train_state(
      init_fn, jax.random.key(0), state_lib.mesh_from_config(config),
      state_lib.rules_from_config(config))
  return init_fn, shardings, abstract


def _generator_run(tmp_path):
  cfg = _config("maskgit_titok")
  rng = np.random.default_rng(0)
  cfg.data.path = str(tmp_path / "tokens")
  token_data.write_token_dataset(cfg.data.path, rng.integers(0, 16, (32, 8)), rng.integers(0, 2, 32))
  cfg.total_steps, cfg.ckpt_every = 2, 2
  workdir = str(tmp_path / "gen")
  gen.train(cfg, workdir, progress=False)
  return cfg, workdir


def test_generator_reader_with_wrong_config_moves_nothing(tmp_path):
  cfg, workdir = _generator_run(tmp_path)
  before = snapshot(workdir)
  wrong = _config("maskgit_titok")
  wrong.model.codebook_size = 4096
  with pytest.raises(ckpt_lib.CheckpointMismatchError,
                     match=r"(?s)model.codebook_size: checkpoint 16, now 4096.*Nothing was changed"):
    gen.load_params(wrong, workdir)
  assert snapshot(workdir) == before
  # The trainer refuses the same config, and then trains on with the right one.
  wrong.data.path = cfg.data.path
  with pytest.raises(ckpt_lib.ConfigMismatchError, match="model.codebook_size"):
    gen.train(wrong, workdir, progress=False)
  assert snapshot(workdir) == before
  cfg.total_steps = 4         # a longer schedule is a change too: said explicitly
  with pytest.raises(ckpt_lib.ConfigMismatchError, match="total_steps: checkpoint 2, now 4"):
    gen.train(cfg, workdir, progress=False)
  cfg.on_config_change = "resume"
  gen.train(cfg, workdir, progress=False)
  assert ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True).all_steps() == [2, 4]
