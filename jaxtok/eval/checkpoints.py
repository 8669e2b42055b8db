"""Tokenizer parameters from disk, for the tools (encode, decode, evaluate, pretokenize, sample).

A `--checkpoint` path may be
  * a training workdir (`tools/train.py --workdir DIR`): its `DIR/checkpoints` is used;
  * a checkpoint directory of `jaxtok.train.checkpoint.Checkpointer` (numbered step directories):
    the newest step is used;
  * one step directory of such a checkpoint (`DIR/checkpoints/1000`);
  * a parameter directory written by orbax's `StandardCheckpointer` holding the tokenizer's
    nnx.State (what `jaxtok.train.loop.load_params` reads), or the output folder of
    tools/convert.py (`OUT/params` + `OUT/config.json`, whose config is then used by default).
From a training checkpoint only the weights are read (orbax partial restore of `ema_params` or
`params`, plus `model_state` when the model has non-parameter variables): the optimizer state is
never materialised and the optimizer config is not needed.

The tokenizer config may come from a config file (`configs/titok.py:tiny`: a training config with
`.model`, or a bare model config with `.name`) or, for training checkpoints, from the config the
run stored beside its weights.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax

STATE_KEYS = ("params", "ema_params", "model_state")


def model_config(config: Any) -> dict:
  """The tokenizer's model config of a training config (`config.model`) or of a model config."""
  from jaxtok.tokenizers import api  # pylint: disable=g-import-not-at-top
  cfg = api.as_dict(config)
  if isinstance(cfg.get("model"), dict) or hasattr(cfg.get("model"), "to_dict"):
    return api.as_dict(cfg["model"])
  if "name" in cfg:
    return cfg
  raise ValueError(f"--config must be a training config with a `model` field or a model config with "
                   f"a `name` field, got fields {sorted(cfg)}")


def _is_step_dir(path: str) -> bool:
  return os.path.basename(os.path.normpath(path)).isdigit() and os.path.isdir(os.path.join(path, "state"))


def _steps(path: str) -> list[int]:
  return sorted(int(d) for d in os.listdir(path)
                if d.isdigit() and os.path.isdir(os.path.join(path, d, "state")))


def resolve(path: str, *, flag: str = "--checkpoint") -> dict:
  """Classifies a checkpoint path: {"kind": "train", "step_dir", "step"} or {"kind": "params", "dir"}.

  Raises:
    FileNotFoundError / ValueError naming `flag`, what was expected and what was found.
  """
  expected = ("a training workdir (with checkpoints/), a checkpoint directory of numbered steps, one "
              "step directory, or an orbax parameter directory")
  if not path:
    raise ValueError(f"{flag} is required: expected {expected}, got an empty value")
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{flag}: expected {expected}; {path!r} does not exist")
  if not os.path.isdir(path):
    raise ValueError(f"{flag}: expected {expected}; {path!r} is a file")
  if _is_step_dir(path):
    return {"kind": "train", "step_dir": path, "step": int(os.path.basename(path))}
  root = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
  steps = _steps(root)
  if steps:
    return {"kind": "train", "step_dir": os.path.join(root, str(steps[-1])), "step": steps[-1]}
  for d in (path, os.path.join(path, "params")):  # tools/convert.py writes OUT/params + OUT/config.json
    if os.path.exists(os.path.join(d, "_METADATA")) or os.path.exists(os.path.join(d, "manifest.ocdbt")):
      return {"kind": "params", "dir": d}
  found = sorted(os.listdir(path))[:10]
  raise ValueError(f"{flag}: expected {expected}; {path!r} holds none (found {found or 'nothing'})")


def stored_config(path: str, *, flag: str = "--checkpoint") -> dict | None:
  """The config a training run stored with its checkpoint (None for parameter directories)."""
  where = resolve(path, flag=flag)
  if where["kind"] != "train":
    # A converted checkpoint (tools/convert.py): config.json beside (or in) the params directory.
    for f in (os.path.join(os.path.dirname(where["dir"]), "config.json"),
              os.path.join(where["dir"], "config.json")):
      if os.path.isfile(f):
        with open(f) as fh:
          return json.load(fh)
    return None
  cfg_dir = os.path.join(where["step_dir"], "config")
  for name in ("metadata", "config.json", "_METADATA"):
    f = os.path.join(cfg_dir, name)
    if os.path.isfile(f):
      try:
        with open(f) as fh:
          data = json.load(fh)
        if isinstance(data, dict) and data:
          return data
      except (OSError, ValueError):
        continue
  return None


def _state_keys(state_dir: str) -> list[str]:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.PyTreeCheckpointer() as ckptr:
    meta = ckptr.metadata(state_dir)
  tree = getattr(meta, "item_metadata", None) or meta
  return list(tree.keys())


def _restore_partial(state_dir: str, target: dict) -> dict:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), target)
  with ocp.PyTreeCheckpointer() as ckptr:
    return ckptr.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))


def load_params(tokenizer: Any, path: str, *, use_ema: bool = True, flag: str = "--checkpoint",
                device: jax.Device | None = None) -> tuple[Any, dict]:
  """(nnx.State of the tokenizer's parameters on one device, info {kind, step, weights, path}).

  Args:
    tokenizer: a `jaxtok.tokenizers.api.Tokenizer` (its abstract parameters are the restore target).
    path: see the module docstring.
    use_ema: take the EMA weights of a training checkpoint when it kept them.
    device: where the parameters go (default: the first local device).
  """
  from jaxtok.train import state as state_lib  # pylint: disable=g-import-not-at-top
  where = resolve(path, flag=flag)
  sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                          tokenizer.abstract_params())
  if where["kind"] == "params":
    from jaxtok.train import loop  # pylint: disable=g-import-not-at-top
    try:
      params = loop.load_params(where["dir"], tokenizer, sharding)
    except Exception as err:
      raise ValueError(f"{flag}: {where['dir']!r} does not hold parameters of the configured "
                       f"tokenizer {tokenizer.config.get('name')!r}: {type(err).__name__}: "
                       f"{str(err).splitlines()[0][:300] if str(err) else ''}") from err
    return params, {"kind": "params", "step": None, "weights": "params", "path": where["dir"]}
  state_dir = os.path.join(where["step_dir"], "state")
  keys = _state_keys(state_dir)
  weights = "ema_params" if use_ema and "ema_params" in keys else "params"
  if weights not in keys:
    raise ValueError(f"{flag}: {state_dir!r} holds no tokenizer parameters (keys {sorted(keys)})")
  trainable, rest = state_lib.split_params(abstract)
  target = {weights: trainable}
  if jax.tree.leaves(rest):
    target["model_state"] = rest
  try:
    out = _restore_partial(state_dir, target)
  except Exception as err:
    raise ValueError(f"{flag}: the checkpoint at {state_dir!r} does not match the configured tokenizer "
                     f"{tokenizer.config.get('name')!r} (wrong --config?): {type(err).__name__}: "
                     f"{str(err).splitlines()[0][:300] if str(err) else ''}") from err
  params = out[weights]
  if "model_state" in out:
    from flax import nnx  # pylint: disable=g-import-not-at-top
    params = nnx.merge_state(params, out["model_state"])
  return params, {"kind": "train", "step": where["step"], "weights": weights.replace("_params", ""),
                  "path": where["step_dir"]}


def load_tokenizer(config: Any, path: str, *, use_ema: bool = True, flag: str = "--checkpoint",
                   config_flag: str = "--config") -> tuple[Any, Any, dict]:
  """(Tokenizer, params, info) from a config (or None: the training checkpoint's stored config).

  info also holds "model_config" (the plain-dict model config actually used).
  """
  from jaxtok.tokenizers import api  # pylint: disable=g-import-not-at-top
  if config is None:
    stored = stored_config(path, flag=flag)
    if stored is None:
      raise ValueError(f"{config_flag} is required for {path!r}: only training checkpoints and "
                       "tools/convert.py outputs carry their config; pass the tokenizer's config file "
                       "(e.g. configs/titok.py:tiny)")
    config = stored
  mcfg = model_config(config)
  tokenizer = api.build(mcfg)
  params, info = load_params(tokenizer, path, use_ema=use_ema, flag=flag)
  info["model_config"] = json.loads(json.dumps(mcfg, default=str))
  return tokenizer, params, info


def save_params(path: str, params: Any) -> None:
  """Writes a tokenizer's nnx.State as an orbax parameter directory (`load_params` reads it)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(path), params)


def codebook_size(tokenizer: Any) -> int | None:
  """Number of discrete codes of a tokenizer (None for continuous tokens)."""
  cfg = tokenizer.config
  quantizer = cfg.get("quantizer", "fsq" if cfg.get("name") == "flextok" else "vq")
  if cfg.get("name") == "vae" or quantizer == "vae":
    return None
  if quantizer == "fsq" or cfg.get("name") == "flextok":
    from jaxtok.quantizers import fsq  # pylint: disable=g-import-not-at-top
    from jaxtok.tokenizers import flextok  # pylint: disable=g-import-not-at-top
    levels = cfg.get("fsq_levels") or getattr(flextok, "FSQ_LEVELS", None)
    return int(fsq.codebook_size(tuple(levels)))
  return int(cfg.get("codebook_size", 0)) or None


def codebook_vectors(tokenizer: Any, params: Any) -> jax.Array | None:
  """The code vectors [C, D] float32 that token ids index (None for continuous tokens).

  VQ: the learned codebook (l2-normalised when the model looks codes up normalised); FSQ: the
  implicit grid of all level combinations.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  model = tokenizer.model(params)
  if codebook_size(tokenizer) is None:
    return None
  levels = getattr(model, "fsq_levels", None)
  if getattr(model, "quantizer", "fsq" if levels else "vq") == "fsq" and levels:
    from jaxtok.quantizers import fsq  # pylint: disable=g-import-not-at-top
    return jnp.asarray(fsq.implicit_codebook(levels), jnp.float32)
  book = jnp.asarray(model.codebook.get_value(), jnp.float32)
  if getattr(model, "use_l2_norm", False):
    book = book / jnp.maximum(jnp.linalg.norm(book, axis=-1, keepdims=True), 1e-12)
  return book
