"""Orbax checkpoints of the train state, the data iterator state and the config; the workdir lock.

One step directory holds three items:
  state   the TrainState pytree (params, opt_state, ema_params, disc_*, step, ...), written
          asynchronously (the device-to-host copy blocks, the disk write runs in the background);
  data    the data iterator's state as JSON (grain's `get_state()`), so a resumed run reads the same
          examples as a run that never stopped;
  config  the run's config as JSON: a resumed run is compared with it.

A user's checkpoints are never lost:
  * atomic writes come from orbax: a step is written under a temporary name and renamed only once
    complete, so a run killed mid-write leaves no step directory that looks finished;
  * a resume with a different config is refused (`ConfigMismatchError` names every differing field)
    unless the run says `on_config_change="resume"`; a state whose structure or shapes differ from the
    checkpoint's is refused (`CheckpointMismatchError` names the differing entries): a mismatch is
    never taken for damage, and nothing is moved;
  * a finished step whose files were later damaged fails to restore: a trainer (never a reader) falls
    back to the newest older step that restores and moves the damaged newer steps aside to
    `<directory>.corrupt/<step>` (unreadable, and in the way of the steps training will write again);
    when no step restores, `NoReadableCheckpointError` is raised and nothing is moved;
  * readers (`read_only=True`: sample, evaluate, tokenize, pretokenize) never create, move, rename or
    delete anything, not even orbax's temporary directories of a run that is still writing;
  * one trainer per workdir: `WorkdirLock` (an `flock` held for the whole run) refuses a second.
The trainers also refuse to save a state holding NaN/inf (see `jaxtok.train.loop`).

Restore reads straight into the target shardings: the target is an abstract state whose leaves are
`jax.ShapeDtypeStruct`s carrying `NamedSharding`s (see `state.abstract_train_state`).

The one reader of model weights is `load_params(path, target)` (tools, the generator sampler, the
TiTok teacher, a run's warm start `config.init_from`). `path` may be a training workdir (its `checkpoints/`), a checkpoint directory of
numbered steps (the newest is read), one step directory, an orbax parameter directory holding an
nnx.State (`save_params`), or the output folder of tools/convert.py (`OUT/params` + `OUT/config.json`).
From a training checkpoint only the weights are read (orbax partial restore of `ema_params` or
`params`, plus `model_state`): the optimizer state is never materialised.
"""
from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import logging
import os
import shutil
import socket
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

# Fields that change how a run reports and saves, never what it computes: they may differ on resume.
OPERATIONAL_FIELDS = frozenset({"log_every", "eval_every", "ckpt_every",
                                "keep_checkpoints", "final_eval", "step_delay_s", "on_config_change",
                                "data.device_prefetch"})
ON_CONFIG_CHANGE = ("error", "resume")


class ConfigMismatchError(ValueError):
  """The run's config differs from the config stored with the checkpoint it would resume."""


class CheckpointMismatchError(ValueError):
  """The checkpoint's state tree (keys, shapes, dtypes) differs from the state the run builds."""


class NoReadableCheckpointError(RuntimeError):
  """Every checkpoint in the directory failed to restore."""


class WorkdirBusyError(RuntimeError):
  """Another trainer holds the workdir's lock."""


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


def config_to_json(config: Any) -> dict:
  """A ConfigDict (or dict) as plain JSON data."""
  data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return json.loads(json.dumps(data, default=str))


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(obj, dict) and obj:
    out = {}
    for k, v in obj.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: obj}


def config_differences(stored: dict, current: dict, *,
                       ignore: frozenset[str] = OPERATIONAL_FIELDS) -> list[str]:
  """'field: checkpoint A, now B' for every dotted field whose JSON value differs (sorted).

  Fields in `ignore` (logging/checkpoint cadence, device prefetch depth; a top-level name covers
  its sub-fields) are skipped, and so is a field absent on one side and None on the other: an
  optional section that is off (e.g. `repa`, added after the checkpoint was written) changes nothing.
  """
  a, b = _flatten(config_to_json(stored)), _flatten(config_to_json(current))
  out = []
  for key in sorted(set(a) | set(b)):
    if key.split(".")[0] in ignore or key in ignore:
      continue
    va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
    off = (va == "<absent>" and vb is None) or (va is None and vb == "<absent>")
    if va != vb and not off:
      out.append(f"{key}: checkpoint {json.dumps(va)}, now {json.dumps(vb)}")
  return out


def _key_name(k: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def tree_signature(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """{'a.b.c': (shape, dtype)} of every array leaf; paths use plain key names (as orbax stores them)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if leaf is None:
      continue
    names = [_key_name(k) for k in path]
    if len(names) > 1 and names[-1] == "value":  # nnx Variables add a `.value` level on both sides
      names = names[:-1]
    name = ".".join(names)
    out[name] = (tuple(int(d) for d in getattr(leaf, "shape", ())), str(np.dtype(leaf.dtype)))
  return out


def signature_differences(stored: dict, wanted: dict, *, limit: int = 8) -> list[str]:
  """Human-readable differences of two `tree_signature`s (at most `limit`, then a count)."""
  out = []
  for key in sorted(set(stored) | set(wanted)):
    if key not in wanted:
      out.append(f"{key}: in the checkpoint {stored[key][0]} {stored[key][1]}, not in this run's state")
    elif key not in stored:
      out.append(f"{key}: in this run's state {wanted[key][0]} {wanted[key][1]}, not in the checkpoint")
    elif stored[key] != wanted[key]:
      out.append(f"{key}: checkpoint {stored[key][0]} {stored[key][1]}, this run {wanted[key][0]} "
                 f"{wanted[key][1]}")
  if len(out) > limit:
    out = out[:limit] + [f"... and {len(out) - limit} more"]
  return out


def _raise_on_mismatch(stored: dict, target: Any, *, what: str, hint: str = "") -> None:
  """CheckpointMismatchError naming every difference between a stored `tree_signature` and the
  tree `target` (names, shapes, dtypes); `what` starts the message, `hint` names config changes."""
  problems = signature_differences(stored, tree_signature(target))
  if problems:
    raise CheckpointMismatchError(
        f"{what}{hint}:\n  " + "\n  ".join(problems) + "\nNothing was changed on disk: use the "
        "config the checkpoint was trained with (wrong --config?), or a new --workdir.")


def _config_hint(diffs: list[str]) -> str:
  return f" (config differences: {'; '.join(diffs[:6])})" if diffs else ""


def _first_line(err: BaseException) -> str:
  text = str(err).strip()
  return f"{type(err).__name__}: {text.splitlines()[0][:300] if text else ''}"


@contextlib.contextmanager
def _quiet_orbax():
  """Silences orbax's own logging of a failing restore (absl warnings, and asyncio's 'Task exception
  was never retrieved' with the damaged bytes dumped in full): the caller logs one line per step."""
  loggers = [logging.getLogger(n) for n in ("absl", "asyncio")]
  levels = [lg.level for lg in loggers]
  for lg in loggers:
    lg.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    gc.collect()  # abandoned orbax tasks report their exceptions when collected: do it while quiet
    for lg, level in zip(loggers, levels):
      lg.setLevel(level)


class WorkdirLock:
  """An exclusive `flock` on `<workdir>/.jaxtok.lock`, held while a trainer runs.

  Only process 0 locks (all processes of one run share the workdir); the others learn the outcome
  through a broadcast, so every process of a refused run raises. The kernel drops the lock when the
  process dies, so a killed run never leaves a stale lock.

  Raises:
    WorkdirBusyError: another trainer holds it (the message names its pid, host and start time).
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), ".jaxtok.lock")
    self._fd = None
    ok, holder = True, ""
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:
        ok = False
        try:
          holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        finally:
          os.close(fd)
      else:
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
    if jax.process_count() > 1:
      ok = bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))
    if not ok:
      raise WorkdirBusyError(
          f"workdir {os.path.dirname(self.path)!r} is in use by another trainer "
          f"({holder or 'holder unknown'}); two runs writing one workdir would destroy each other's "
          "checkpoints: wait for it to finish or use another --workdir")

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()


def nonfinite_leaves(state: Any, *, limit: int = 5) -> list[str]:
  """Paths of the floating leaves of `state` holding NaN or inf (at most `limit`); [] when finite.

  One jitted reduction per leaf and one host transfer of the flags: cheap next to writing the state.
  """
  flags = _finite_flags(state)
  names = list(tree_signature(state))
  bad = [n for n, ok in zip(names, jax.device_get(flags)) if not bool(ok)]
  return bad[:limit] + ([f"... and {len(bad) - limit} more"] if len(bad) > limit else [])


@jax.jit
def _finite_flags(state: Any) -> list[jax.Array]:
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return [jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)
          for x in jax.tree.leaves(state)]


def save_finite(ckpt: "Checkpointer", step: int, state: Any, *, data_state: Any = None,
                config: Any = None, metrics: dict | None = None) -> None:
  """Saves `state` at `step` only when every floating value in it is finite.

  A diverged state is never written, so it can never rotate the last good checkpoints out.

  Raises:
    FloatingPointError: naming the step, the non-finite state entries and metrics, and the newest
      (finite) checkpoint a restart would resume from.
  """
  bad = nonfinite_leaves(state)
  if not bad:
    ckpt.save(step, state, data_state=data_state, config=config)
    return
  ckpt.wait()
  host = {k: float(v) for k, v in jax.device_get(metrics or {}).items()}
  bad_metrics = {k: v for k, v in host.items() if not np.isfinite(v)}
  last = ckpt.latest_step()
  raise FloatingPointError(
      f"training diverged: at step {step} the train state holds NaN/inf ({', '.join(bad)}); "
      f"non-finite metrics at that step: {bad_metrics or 'none'}. This state was NOT saved; "
      + (f"the newest checkpoint, step {last}, is finite and a restart resumes from it "
         "(lower optim.lr or raise optim.clip first)." if last is not None else
         "no checkpoint was written before it."))


class Checkpointer:
  """Keeps the newest `keep` checkpoints of a run in `directory`.

  Args:
    directory: absolute or relative path of the checkpoint root (created if missing, unless read_only).
    keep: how many of the newest steps to keep (>= 1).
    async_save: write in a background thread (the default); `wait()` blocks until written.
    read_only: for readers: never create, move or delete anything; `save` raises.
  """

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    if int(keep) < 1:
      raise ValueError(f"keep must be >= 1, got {keep}")
    self.directory = os.path.abspath(directory)
    self._keep = int(keep)
    self._async = bool(async_save)
    self.read_only = bool(read_only)
    self._manager = self._make_manager()

  def _make_manager(self) -> ocp.CheckpointManager | None:
    if self.read_only:
      if not os.path.isdir(self.directory):
        return None
      options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                             cleanup_tmp_directories=False,
                                             enable_async_checkpointing=False)
    else:
      options = ocp.CheckpointManagerOptions(
          max_to_keep=self._keep, create=True, enable_async_checkpointing=self._async,
          cleanup_tmp_directories=True)
    return ocp.CheckpointManager(self.directory, item_names=("state", "data", "config"),
                                 options=options)

  # --------------------------------------------------------------------------------------------
  def all_steps(self) -> list[int]:
    """Completed (finalised) steps, oldest first."""
    return sorted(self._manager.all_steps()) if self._manager is not None else []

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, *, data_state: Any = None, config: Any = None,
           force: bool = True) -> bool:
    """Starts saving `state` (asynchronously) at `step`; returns whether a save was started.

    Args:
      step: the training step the state has reached (state["step"]).
      state: the TrainState pytree of (sharded) jax Arrays; every process must call save.
      data_state: JSON-able data iterator state (dict; bytes are accepted), or None.
      config: JSON-able config dict (e.g. `config.to_dict()`), or None.
    """
    if self.read_only:
      raise ValueError(f"Checkpointer({self.directory!r}) is read-only: save is not allowed")
    items = {"state": ocp.args.StandardSave(state),
             "data": ocp.args.JsonSave(_to_json(data_state if data_state is not None else {})),
             "config": ocp.args.JsonSave(_to_json(config if config is not None else {}))}
    return bool(self._manager.save(int(step), args=ocp.args.Composite(**items), force=force))

  def wait(self) -> None:
    """Blocks until every started save is on disk."""
    if self._manager is not None:
      self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for started saves and releases the manager (idempotent)."""
    if self._manager is not None:
      self._manager.wait_until_finished()
      self._manager.close()
      self._manager = None

  # --------------------------------------------------------------------------------------------
  def stored_config(self, step: int) -> dict | None:
    """The config JSON saved with `step` (None when absent or unreadable)."""
    return self.stored_config_at(self.directory, step)

  @staticmethod
  def stored_config_at(directory: str, step: int) -> dict | None:
    """The config JSON saved with `step` under checkpoint root `directory` (None when absent)."""
    for name in ("metadata", "config.json"):
      path = os.path.join(directory, str(step), "config", name)
      try:
        with open(path) as f:
          data = json.load(f)
      except (OSError, ValueError):
        continue
      return data if isinstance(data, dict) and data else None
    return None

  def state_signature(self, step: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """`tree_signature` of the state saved at `step`, from orbax's metadata (no array is read)."""
    return _signature_of(os.path.join(self.directory, str(step), "state"))

  def check_compatible(self, step: int, abstract_state: Any, *, config: Any = None,
                       on_config_change: str = "error") -> None:
    """Raises ConfigMismatchError / CheckpointMismatchError when `step` cannot be this run's.

    Args:
      config: the run's config; compared with the stored one unless either is missing/empty.
      on_config_change: "error" refuses differing fields; "resume" logs them and goes on (the state
        structure must still match).
    """
    if on_config_change not in ON_CONFIG_CHANGE:
      raise ValueError(f"on_config_change must be one of {ON_CONFIG_CHANGE}, got {on_config_change!r}")
    stored = self.stored_config(step)
    diffs = config_differences(stored, config) if stored and config is not None else []
    if diffs and on_config_change == "error":
      raise ConfigMismatchError(
          f"the config differs from the one stored with checkpoint step {step} in "
          f"{self.directory!r}:\n  " + "\n  ".join(diffs) +
          "\nNothing was changed on disk. To train this config from scratch use a new --workdir; to "
          "continue these checkpoints with the new values pass --config.on_config_change=resume.")
    if diffs:
      log.warning("checkpoint step %d was saved with other config values; going on with this "
                  "run's: %s", step, "; ".join(diffs))
    try:
      stored_sig = self.state_signature(step)
    except Exception:  # pylint: disable=broad-except
      stored_sig = {}
    if not stored_sig:  # unreadable metadata is damage, not a mismatch: restore() deals with it.
      return
    _raise_on_mismatch(stored_sig, abstract_state, hint=_config_hint(diffs),
                       what=f"checkpoint step {step} in {self.directory!r} holds a different "
                            "model/train state than this run builds")

  def restore_step(self, step: int, abstract_state: Any) -> tuple[Any, Any, dict]:
    """Restores one step into the shardings of `abstract_state` (no checks, no fallback).

    Returns:
      (state, data_state, config_dict).
    """
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                              data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore())
    out = self._manager.restore(int(step), args=args)
    return out["state"], _from_json(out["data"]), out["config"]

  def restore(self, abstract_state: Any, *, config: Any = None,
              on_config_change: str | None = None) -> tuple[Any, Any, int] | None:
    """Restores the newest checkpoint that reads, or returns None when there is none.

    The newest step is first checked against the run (`check_compatible`): a mismatch raises and
    nothing moves. A step that then fails to restore is damaged: one log line names it and the next
    older step is tried. When an older step restores, a writable Checkpointer moves the damaged newer
    steps to `<directory>.corrupt/` (the run will write those step numbers again); a read-only one
    leaves them. When none restores, NoReadableCheckpointError is raised and nothing is moved.

    Returns:
      (state, data_state, step) or None.
    """
    steps = self.all_steps()
    if not steps:
      return None
    if config is not None:
      config = config_to_json(config)
      if on_config_change is None:
        on_config_change = str(config.get("on_config_change", "error"))
    self.check_compatible(steps[-1], abstract_state, config=config,
                          on_config_change=on_config_change or "error")
    damaged = []
    for step in reversed(steps):
      try:
        with _quiet_orbax():
          state, data_state, _ = self.restore_step(step, abstract_state)
      except Exception as err:  # orbax / tensorstore raise many types for damaged files.
        log.error("checkpoint step %d in %s is unreadable (%s)", step, self.directory,
                  _first_line(err))
        damaged.append((step, _first_line(err)))
        continue
      if damaged and not self.read_only:
        for bad, _ in damaged:
          log.error("moving damaged checkpoint step %d to %s.corrupt/%d; resuming from step %d",
                    bad, self.directory, bad, step)
          self._move_aside(bad)
      return state, data_state, step
    raise NoReadableCheckpointError(
        f"none of the {len(steps)} checkpoints in {self.directory!r} restores:\n  " +
        "\n  ".join(f"step {s}: {e}" for s, e in damaged) +
        "\nNothing was moved or deleted. Use a new --workdir to start over, or repair/remove the "
        "damaged steps yourself.")

  def _move_aside(self, step: int) -> None:
    self._manager.wait_until_finished()
    if jax.process_index() == 0:
      src = os.path.join(self.directory, str(step))
      dst_root = self.directory + ".corrupt"
      os.makedirs(dst_root, exist_ok=True)
      dst = os.path.join(dst_root, str(step))
      n = 1
      while os.path.exists(dst):  # never overwrite an earlier set-aside step
        dst = os.path.join(dst_root, f"{step}.{n}")
        n += 1
      if os.path.exists(src):
        shutil.move(src, dst)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"jaxtok_ckpt_move_{step}")
    self._manager.close()
    self._manager = self._make_manager()


# ------------------------------------------------------------------------------------------------
# The weights reader (read-only: it never creates, moves or deletes anything).
_EXPECTED = ("a training workdir (with checkpoints/), a checkpoint directory of numbered steps, one "
             "step directory, or an orbax parameter directory")


def _step_dirs(root: str) -> list[int]:
  return sorted(int(d) for d in os.listdir(root)
                if d.isdigit() and os.path.isdir(os.path.join(root, d, "state")))


def resolve(path: str, *, flag: str = "--checkpoint") -> dict:
  """Classifies a weights path: {"kind": "train", "step_dir", "step"} or {"kind": "params", "dir"}.

  Raises:
    FileNotFoundError / ValueError naming `flag`, what was expected and what was found.
  """
  if not path:
    raise ValueError(f"{flag} is required: expected {_EXPECTED}, got an empty value")
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{flag}: expected {_EXPECTED}; {path!r} does not exist")
  if not os.path.isdir(path):
    raise ValueError(f"{flag}: expected {_EXPECTED}; {path!r} is a file")
  if os.path.basename(path).isdigit() and os.path.isdir(os.path.join(path, "state")):
    return {"kind": "train", "step_dir": path, "step": int(os.path.basename(path))}
  root = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
  steps = _step_dirs(root)
  if steps:
    return {"kind": "train", "step_dir": os.path.join(root, str(steps[-1])), "step": steps[-1]}
  for d in (path, os.path.join(path, "params")):  # tools/convert.py writes OUT/params + OUT/config.json
    if os.path.exists(os.path.join(d, "_METADATA")) or os.path.exists(os.path.join(d, "manifest.ocdbt")):
      return {"kind": "params", "dir": d}
  found = sorted(os.listdir(path))[:10]
  raise ValueError(f"{flag}: expected {_EXPECTED}; {path!r} holds none (found {found or 'nothing'})")


def read_config(path: str, *, flag: str = "--checkpoint") -> dict | None:
  """The config stored with the weights at `path` (see `resolve`), or None when there is none.

  A training step stores the run's config; a converted checkpoint (tools/convert.py) its model
  config as `config.json` beside (or in) the parameter directory.
  """
  where = resolve(path, flag=flag)
  if where["kind"] == "train":
    step_dir = where["step_dir"]
    return Checkpointer.stored_config_at(os.path.dirname(step_dir), where["step"])
  for f in (os.path.join(os.path.dirname(where["dir"]), "config.json"),
            os.path.join(where["dir"], "config.json")):
    if os.path.isfile(f):
      with open(f) as fh:
        return json.load(fh)
  return None


def _signature_of(directory: str) -> dict[str, tuple[tuple[int, ...], str]]:
  """`tree_signature` of the pytree orbax stored in `directory`, from its metadata only."""
  with _quiet_orbax(), ocp.StandardCheckpointer() as reader:
    meta = reader.metadata(directory)
  tree = getattr(meta, "item_metadata", meta)
  return tree_signature(getattr(tree, "tree", tree))


def _check_weights(stored: dict, directory: str, target: Any, *, what: str, partial: bool = False,
                   hint: str = "") -> None:
  """Raises when the stored signature `stored` (of `directory`) differs from `target`; `partial`:
  only the stored entries under `target`'s top-level keys are compared."""
  if not stored:
    raise ValueError(f"{what} at {directory!r} has no readable metadata")
  if partial:
    stored = {k: v for k, v in stored.items() if k.split(".")[0] in set(target)}
  _raise_on_mismatch(stored, target, what=f"{what} at {directory!r} holds other weights than the "
                     "configured model", hint=hint)


def load_params(path: str, target: Any, *, use_ema: bool = True, config: Any = None,
                flag: str = "--checkpoint", sharding: Any = None) -> tuple[Any, dict]:
  """Reads a model's weights: (nnx.State shaped like `target`, info {kind, step, weights, path}).

  Args:
    path: see the module docstring (`resolve`).
    target: the model's abstract state (nnx.State of ShapeDtypeStructs, Params and other variables,
      e.g. `Tokenizer.abstract_params()`); leaves carrying a sharding are restored into it.
    use_ema: take a training checkpoint's EMA weights when it kept them.
    config: the reader's config; for a training checkpoint its differences from the stored config
      are named in a mismatch error (they are not errors by themselves: only the weights must fit).
    flag: the option named in errors.
    sharding: restore every leaf into this sharding (default: the leaf's own, else the first local
      device).

  Raises:
    CheckpointMismatchError: the stored weights' names, shapes or dtypes differ from `target`'s
      (every difference named); FileNotFoundError / ValueError for a path that holds no weights.
  """
  from jaxtok.train import state as state_lib  # pylint: disable=g-import-not-at-top
  where = resolve(path, flag=flag)
  default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                     sharding=sharding or getattr(a, "sharding", None) or default),
      target)
  if where["kind"] == "params":
    _check_weights(_signature_of(where["dir"]), where["dir"], target,
                   what=f"{flag}: the parameter directory")
    with _quiet_orbax(), ocp.StandardCheckpointer() as reader:
      params = reader.restore(where["dir"], target)
    return params, {"kind": "params", "step": None, "weights": "params", "path": where["dir"]}
  state_dir = os.path.join(where["step_dir"], "state")
  stored = _signature_of(state_dir)
  keys = {k.split(".")[0] for k in stored}
  weights = "ema_params" if use_ema and "ema_params" in keys else "params"
  if weights not in keys:
    raise ValueError(f"{flag}: {state_dir!r} holds no model parameters (keys {sorted(keys)})")
  trainable, rest = state_lib.split_params(target)
  wanted = {weights: trainable}
  if jax.tree.leaves(rest):
    wanted["model_state"] = rest
  stored_cfg = Checkpointer.stored_config_at(os.path.dirname(where["step_dir"]), where["step"])
  diffs = config_differences(stored_cfg, config) if stored_cfg and config is not None else []
  _check_weights(stored, state_dir, wanted, what=f"{flag}: checkpoint step {where['step']}",
                 partial=True, hint=_config_hint(diffs))
  with _quiet_orbax(), ocp.PyTreeCheckpointer() as reader:
    out = reader.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=wanted, partial_restore=True,
        restore_args=jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), wanted)))
  params = out[weights]
  if "model_state" in out:
    from flax import nnx  # pylint: disable=g-import-not-at-top
    params = nnx.merge_state(params, out["model_state"])
  return params, {"kind": "train", "step": where["step"], "weights": weights.replace("_params", ""),
                  "path": where["step_dir"]}


def save_params(path: str, params: Any) -> None:
  """Writes a model's nnx.State as an orbax parameter directory (`load_params` reads it)."""
  with ocp.StandardCheckpointer() as writer:
    writer.save(os.path.abspath(path), params)
