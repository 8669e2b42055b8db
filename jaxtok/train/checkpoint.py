"""Orbax checkpoints of the train state, the data iterator state and the config.

One step directory holds three items:
  state   the TrainState pytree (params, opt_state, ema_params, disc_*, step, ...), written
          asynchronously (the device-to-host copy blocks, the disk write runs in the background);
  data    the data iterator's state as JSON (grain's `get_state()`), so a resumed run reads the same
          examples as a run that never stopped;
  config  the run's config as JSON, for the record.

Atomicity comes from orbax: a step is written under a temporary name and renamed only once complete,
so a run killed mid-write leaves no step directory that looks finished. A finished step whose files
were later damaged (truncated, corrupted) fails to restore; `restore` then logs an error naming the
step, moves it aside to `<directory>.corrupt/<step>` (so training can write that step again) and
falls back to the previous complete step.

Restore reads straight into the target shardings: the target is an abstract state whose leaves are
`jax.ShapeDtypeStruct`s carrying `NamedSharding`s (see `state.abstract_train_state`).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


def _to_json(obj: Any) -> Any:
  """Makes a grain iterator state / config JSON-serialisable (bytes become latin-1 strings)."""
  if isinstance(obj, dict):
    return {str(k): _to_json(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_to_json(v) for v in obj]
  if isinstance(obj, bytes):
    return {"__bytes__": obj.decode("latin-1")}
  if hasattr(obj, "item") and getattr(obj, "shape", None) == ():
    return obj.item()
  return obj


def _from_json(obj: Any) -> Any:
  if isinstance(obj, dict):
    if set(obj) == {"__bytes__"}:
      return obj["__bytes__"].encode("latin-1")
    return {k: _from_json(v) for k, v in obj.items()}
  if isinstance(obj, list):
    return [_from_json(v) for v in obj]
  return obj


class Checkpointer:
  """Keeps the newest `keep` checkpoints of a run in `directory`.

  Args:
    directory: absolute or relative path of the checkpoint root (created if missing).
    keep: how many of the newest steps to keep (>= 1).
    async_save: write in a background thread (the default); `wait()` blocks until written.
  """

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    if int(keep) < 1:
      raise ValueError(f"keep must be >= 1, got {keep}")
    self.directory = os.path.abspath(directory)
    self._keep = int(keep)
    self._async = bool(async_save)
    self._manager = self._make_manager()

  def _make_manager(self) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=self._keep, create=True, enable_async_checkpointing=self._async,
        cleanup_tmp_directories=True)
    return ocp.CheckpointManager(self.directory, item_names=("state", "data", "config"),
                                 options=options)

  # --------------------------------------------------------------------------------------------
  def all_steps(self) -> list[int]:
    """Completed (finalised) steps, oldest first."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, *, data_state: Any = None, config: Any = None,
           force: bool = True) -> bool:
    """Starts saving `state` (asynchronously) at `step`; returns whether a save was started.

    Args:
      step: the training step the state has reached (state["step"]).
      state: the TrainState pytree of (sharded) jax Arrays; every process must call save.
      data_state: JSON-able data iterator state (dict; bytes are accepted), or None.
      config: JSON-able config dict (e.g. `config.to_dict()`), or None.
    """
    items = {"state": ocp.args.StandardSave(state),
             "data": ocp.args.JsonSave(_to_json(data_state if data_state is not None else {})),
             "config": ocp.args.JsonSave(_to_json(config if config is not None else {}))}
    return bool(self._manager.save(int(step), args=ocp.args.Composite(**items), force=force))

  def wait(self) -> None:
    """Blocks until every started save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  # --------------------------------------------------------------------------------------------
  def restore_step(self, step: int, abstract_state: Any) -> tuple[Any, Any, dict]:
    """Restores one step into the shardings of `abstract_state` (no fallback).

    Returns:
      (state, data_state, config_dict).
    """
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                              data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore())
    out = self._manager.restore(int(step), args=args)
    return out["state"], _from_json(out["data"]), out["config"]

  def restore(self, abstract_state: Any) -> tuple[Any, Any, int] | None:
    """Restores the newest intact checkpoint, or returns None when there is none.

    A step that fails to restore is logged as an error, moved aside to `<directory>.corrupt/<step>`
    and the next older step is tried.

    Returns:
      (state, data_state, step) or None.
    """
    for step in reversed(self.all_steps()):
      try:
        state, data_state, _ = self.restore_step(step, abstract_state)
        return state, data_state, step
      except Exception as err:  # orbax / tensorstore raise many types for damaged files.
        log.error("checkpoint step %d in %s is unreadable (%s: %s); moving it to %s.corrupt/ and "
                  "falling back to the previous checkpoint", step, self.directory,
                  type(err).__name__, str(err).splitlines()[0][:300] if str(err) else "",
                  self.directory)
        self._move_aside(step)
    return None

  def _move_aside(self, step: int) -> None:
    self._manager.wait_until_finished()
    if jax.process_index() == 0:
      src = os.path.join(self.directory, str(step))
      dst_root = self.directory + ".corrupt"
      os.makedirs(dst_root, exist_ok=True)
      dst = os.path.join(dst_root, str(step))
      if os.path.exists(dst):
        shutil.rmtree(dst)
      if os.path.exists(src):
        shutil.move(src, dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"jaxtok_ckpt_move_{step}")
    self._manager.close()
    self._manager = self._make_manager()


def config_to_json(config: Any) -> dict:
  """A ConfigDict (or dict) as plain JSON data."""
  data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return json.loads(json.dumps(data, default=str))
