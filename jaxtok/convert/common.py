"""Shared helpers for converting official PyTorch checkpoints into jaxtok parameters.

The API is small on purpose (other converters build on it):

  read_checkpoint(path)               -> (flat {name: np.ndarray}, safetensors metadata {str: str})
  check_keys(expected, flat, source=) -> None, or ValueError naming missing / unexpected keys and
                                         mismatched shapes (`expected`: {name: shape})
  state_shapes(abstract)              -> {name: shape} of an nnx.State (names: path joined by '.')
  fill_state(abstract, flat, source=) -> an nnx.State shaped like `abstract`, filled from `flat`
                                         (checked with check_keys first)
  abstract_model(make_model, config)  -> the abstract nnx.State of make_model(config) (no allocation)
  build_model(make_model, config, params=None) -> the module, holding params when given
  GeneratorConverter(...)             -> resolve_config / abstract_params / build / load of a
                                         generator converter (convert/maskgit.py, convert/rar.py)
  config_arg(config, released=)       -> a config mapping from a released name, a JSON or YAML file
                                         (the official repositories ship YAML), a JSON string, or a
                                         mapping / ConfigDict

Reading never unpickles code: `.safetensors` files are parsed directly (bfloat16 through ml_dtypes,
which jax ships), and PyTorch files (`.bin`, `.pt`, `.pth`, `.ckpt`) go through
`torch.load(..., weights_only=True)`, with torch imported only then (torch is not a jaxtok
dependency; a clear error says so when it is missing).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import numpy as np

__all__ = ["read_checkpoint", "check_keys", "state_shapes", "fill_state", "abstract_model",
           "build_model", "GeneratorConverter", "config_arg", "TORCH_SUFFIXES"]

TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
# Containers that training scripts wrap a state dict in; the first that holds a dict is unwrapped.
_WRAPPERS = ("state_dict", "model", "module")


def _read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  with open(path, "rb") as f:
    data = f.read()
  if len(data) < 8:
    raise ValueError(f"{path}: not a safetensors file (only {len(data)} bytes)")
  n = int.from_bytes(data[:8], "little")
  if n > len(data) - 8:
    raise ValueError(f"{path}: not a safetensors file (header length {n} exceeds the file)")
  try:
    header = json.loads(data[8:8 + n])
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not a safetensors file (bad header: {e})") from None
  if not isinstance(header, dict):
    raise ValueError(f"{path}: not a safetensors file (header is not a JSON object)")
  metadata = header.pop("__metadata__", None) or {}
  if not isinstance(metadata, dict):
    raise ValueError(f"{path}: bad safetensors header: __metadata__ must be an object, got "
                     f"{type(metadata).__name__}")
  body = memoryview(data)[8 + n:]
  tensors = {}
  for key, info in header.items():
    np_dtype, shape, start, end = _tensor_entry(path, key, info, len(body))
    tensors[key] = np.frombuffer(body[start:end], np_dtype.newbyteorder("<")).reshape(shape).copy()
  return tensors, {str(k): str(v) for k, v in metadata.items()}


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _tensor_entry(path: str, key: str, info: Any, body_len: int):
  """(numpy dtype, shape, start, end) of one header entry, or a ValueError naming the tensor.

  A hostile or damaged header must not reach numpy: negative offsets slice from the end, negative
  dims make reshape fail obscurely, and a non-object entry has no `.get`.
  """
  where = f"{path}: tensor {key!r}"
  if not isinstance(info, dict):
    raise ValueError(f"{where}: header entry must be an object with dtype, shape, data_offsets, "
                     f"got {type(info).__name__} {info!r:.80}")
  dtype = info.get("dtype")
  if dtype == "BF16":
    import ml_dtypes
    np_dtype = np.dtype(ml_dtypes.bfloat16)
  elif isinstance(dtype, str) and dtype in _ST_DTYPES:
    np_dtype = np.dtype(_ST_DTYPES[dtype])
  else:
    raise ValueError(f"{where} has unsupported dtype {dtype!r} (expected one of "
                     f"{sorted(_ST_DTYPES) + ['BF16']})")
  shape = info.get("shape")
  if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
    raise ValueError(f"{where}: shape must be a list of ints >= 0, got {shape!r}")
  offsets = info.get("data_offsets")
  if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
      or not 0 <= offsets[0] <= offsets[1]):
    raise ValueError(f"{where}: data_offsets must be [start, end] with 0 <= start <= end, got "
                     f"{offsets!r}")
  start, end = offsets
  if end > body_len:
    raise ValueError(f"{where} is truncated or corrupt: data_offsets {offsets} reach past the "
                     f"{body_len} bytes of tensor data in the file")
  size = math.prod(shape) * np_dtype.itemsize
  if end - start != size:
    raise ValueError(f"{where} is corrupt: {end - start} bytes for {dtype} {shape} "
                     f"({size} bytes expected)")
  return np_dtype, tuple(shape), start, end


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise ValueError(f"{path}: reading PyTorch files needs torch (not a jaxtok dependency); install "
                     f"it, or convert the file to .safetensors first") from None
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pickle errors, or objects weights_only refuses
    raise ValueError(f"{path}: torch.load(weights_only=True) could not read it "
                     f"({type(e).__name__}: {e})") from None
  for key in _WRAPPERS:
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
      break
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
  out = {}
  for k, v in obj.items():
    if isinstance(v, torch.Tensor):
      v = v.detach().cpu()
      out[str(k)] = (v.float() if v.dtype == torch.bfloat16 else v).numpy()
  return out


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(tensors as numpy arrays keyed by their names, safetensors metadata) of a checkpoint file.

  `.safetensors`: parsed directly (no torch needed; bfloat16 stays bfloat16). PyTorch files
  (TORCH_SUFFIXES): `torch.load(weights_only=True)`; a dict under "state_dict"/"model"/"module" is
  unwrapped, non-tensor entries dropped, metadata empty. Raises ValueError for a missing, unknown or
  corrupt file.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"checkpoint {path!r} does not exist")
  if path.endswith(".safetensors"):
    return _read_safetensors(path)
  if path.endswith(TORCH_SUFFIXES):
    return _read_torch(path), {}
  raise ValueError(f"{path}: unknown checkpoint format (expected .safetensors or one of "
                   f"{', '.join(TORCH_SUFFIXES)})")


def _fmt(keys: list[str], limit: int = 40) -> str:
  shown = ", ".join(keys[:limit])
  return f"[{shown}{', ... (%d more)' % (len(keys) - limit) if len(keys) > limit else ''}]"


def check_keys(expected: Mapping[str, Any], flat: Mapping[str, Any], *, source: str = "checkpoint",
               target: str = "jaxtok") -> None:
  """Raise one ValueError naming every key of `expected` ({name: shape}) missing from `flat`, every
  key of `flat` not expected, and every shape that differs; return None when all agree."""
  missing = sorted(set(expected) - set(flat))
  unexpected = sorted(set(flat) - set(expected))
  bad = [f"{k}: {list(np.shape(flat[k]))} vs expected {list(expected[k])}"
         for k in sorted(set(expected) & set(flat))
         if tuple(np.shape(flat[k])) != tuple(expected[k])]
  if missing or unexpected or bad:
    parts = ([f"missing keys {_fmt(missing)}"] if missing else []) + (
        [f"unexpected keys {_fmt(unexpected)}"] if unexpected else []) + (
        [f"shape mismatches {_fmt(bad)}"] if bad else [])
    raise ValueError(f"{source} -> {target}: " + "; ".join(parts))


def _name(path) -> str:
  return ".".join(str(k) for k in path)


def state_shapes(abstract) -> dict[str, tuple[int, ...]]:
  """{'a.b.kernel': shape} for every variable of an nnx.State (or abstract state from eval_shape)."""
  from flax import nnx
  return {_name(path): tuple(var.shape) for path, var in nnx.to_flat_state(abstract)}


def stack_layers(flat: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
  """flat with per-layer entries `...blocks.<i>.rest` (i = 0..L-1, as converters write them) stacked
  into `...blocks.rest` [L, ...] wherever `shapes` (a scan_layers model's) expects that name and
  flat lacks it; every other entry is left as is."""
  out = dict(flat)
  for name, shape in shapes.items():
    if name in out or not shape:
      continue
    parts = name.split(".")
    for j, part in enumerate(parts[:-1]):
      if part != "blocks":
        continue
      keys = [".".join(parts[:j + 1] + [str(i)] + parts[j + 1:]) for i in range(shape[0])]
      if all(k in out for k in keys):
        out[name] = np.stack([np.asarray(out.pop(k)) for k in keys])
        break
  return out


def fill_state(abstract, flat: Mapping[str, Any], *, source: str = "checkpoint"):
  """An nnx.State shaped like `abstract` whose every variable is `flat[name]` (name: the variable's
  path joined by '.'), cast to the variable's dtype. Raises the check_keys ValueError first."""
  import jax.numpy as jnp
  from flax import nnx
  entries = list(nnx.to_flat_state(abstract))
  flat = stack_layers(flat, {_name(p): tuple(v.shape) for p, v in entries})
  check_keys({_name(p): tuple(v.shape) for p, v in entries}, flat, source=source)
  return nnx.from_flat_state([(p, v.replace(jnp.asarray(np.asarray(flat[_name(p)]), v.dtype)))
                              for p, v in entries])


def tower_overrides(config: Any, what: str) -> dict:
  """The field overrides a frozen tower's converter was given: {} for None, the mapping (or
  ConfigDict) as a dict; TypeError naming `what` (e.g. "SigLIP") otherwise."""
  if config is not None and not isinstance(config, Mapping) and not hasattr(config, "to_dict"):
    raise TypeError(f"config must be a mapping of {what} fields or None, got "
                    f"{type(config).__name__}")
  return dict(config.to_dict() if hasattr(config, "to_dict") else config or {})


def fill_tower(flat: Mapping[str, Any], overrides: Mapping[str, Any], *, infer_config, convert,
               abstract_params, source: str):
  """(config, nnx.State) of a frozen tower: the config read off the shapes
  (`infer_config(flat, overrides.get("num_heads"))`, heads not being visible in fused weights)
  updated by `overrides`, then `convert(flat, num_heads)` filled into `abstract_params(config)`."""
  cfg = infer_config(flat, overrides.get("num_heads"))
  cfg.update(overrides)
  return cfg, fill_state(abstract_params(cfg), convert(flat, int(cfg["num_heads"])), source=source)


def abstract_model(make_model, config: Mapping[str, Any]):
  """The abstract nnx.State of `make_model(config, rngs=...)` (a generator module's make_model),
  without allocating it."""
  from flax import nnx
  return nnx.split(nnx.eval_shape(lambda: make_model(config, rngs=nnx.Rngs(0))))[1]


def build_model(make_model, config: Mapping[str, Any], params=None):
  """`make_model(config, rngs=...)` holding `params` (an nnx.State) when given, freshly initialised
  otherwise."""
  from flax import nnx
  if params is None:
    return make_model(config, rngs=nnx.Rngs(0))
  abstract = nnx.eval_shape(lambda: make_model(config, rngs=nnx.Rngs(0)))
  return nnx.merge(nnx.graphdef(abstract), params)


class GeneratorConverter:
  """The entry points of a generator converter, for the jaxtok generator module `module` (imported
  on first use) whose configs are named `name`:
    resolve_config(config, flat=None) -> config (a released name or alias, JSON, a jaxtok or an
                                          official mapping, or None: inferred from flat's shapes)
    abstract_params(config)           -> the abstract nnx.State (no allocation)
    build(config, params=None)        -> the module, holding params when given
    load(path, config=None)           -> (config, nnx.State) of an official file; ValueError naming
                                          every missing, unexpected or mis-shaped tensor
  `convert(flat, config)` maps the official names and layouts to jaxtok's.
  """

  def __init__(self, module: str, name: str, *, released, aliases, infer, from_official, convert):
    self.module, self.name, self.convert = module, name, convert
    self.released, self.aliases = released, aliases
    self.infer, self.from_official = infer, from_official

  def _make_model(self, config, *, rngs):
    import importlib  # pylint: disable=g-import-not-at-top
    return importlib.import_module(self.module).make_model(config, rngs=rngs)

  def resolve_config(self, config: Any, flat: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from jaxtok import convert  # pylint: disable=g-import-not-at-top
    cfg = convert.resolve_config(config, flat, released=self.released, aliases=self.aliases,
                                 infer=self.infer, from_official=self.from_official)
    return dict(cfg, name=self.name)

  def abstract_params(self, config: Mapping[str, Any]):
    return abstract_model(self._make_model, config)

  def build(self, config: Mapping[str, Any], params=None):
    return build_model(self._make_model, config, params)

  def load(self, path: str | os.PathLike, config: Any = None):
    flat, _ = read_checkpoint(path)
    cfg = self.resolve_config(config, flat)
    return cfg, fill_state(self.abstract_params(cfg), self.convert(flat, cfg),
                           source=os.fspath(path))


def _read_config_file(path: str) -> Any:
  """A JSON or YAML file's contents; `.yaml`/`.yml` (official configs/infer/*.yaml) read as YAML.

  PyYAML is not a declared jaxtok dependency but always installed: flax, ml_collections and
  orbax-checkpoint require it. safe_load builds plain data only (no Python objects).
  """
  with open(path) as f:
    text = f.read()
  if path.endswith((".yaml", ".yml")):
    import yaml  # pylint: disable=g-import-not-at-top
    try:
      return yaml.safe_load(text)
    except yaml.YAMLError as e:
      raise ValueError(f"config file {path!r} is not valid YAML: {e}") from None
  try:
    return json.loads(text)
  except ValueError as e:
    raise ValueError(f"config file {path!r} is not valid JSON (YAML files must end in .yaml or "
                     f".yml): {e}") from None


def config_arg(config: Any, released: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
  """A config dict from a name in `released`, a path to a JSON or YAML (`.yaml`/`.yml`) file, a
  JSON object as a string, or a mapping / ConfigDict (copied). Raises ValueError for anything
  else."""
  released = released or {}
  if isinstance(config, (str, os.PathLike)):
    text = os.fspath(config)
    if text in released:
      return dict(released[text])
    if os.path.isfile(text):
      config = _read_config_file(text)
    elif text.lstrip().startswith("{"):
      try:
        config = json.loads(text)
      except ValueError as e:
        raise ValueError(f"config string is not a valid JSON object: {e}") from None
    else:
      known = f"a released name ({', '.join(sorted(released))}), " if released else ""
      raise ValueError(f"config {text!r} is neither {known}an existing JSON/YAML file nor a JSON "
                       "object")
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  if not isinstance(config, Mapping):
    raise ValueError(f"config must be a mapping, a name or JSON, got {type(config).__name__}")
  return dict(config)
