"""Shared helpers for converting official PyTorch checkpoints into jaxtok parameters.

The API is small on purpose (other converters build on it):

  read_checkpoint(path)               -> (flat {name: np.ndarray}, safetensors metadata {str: str})
  check_keys(expected, flat, source=) -> None, or ValueError naming missing / unexpected keys and
                                         mismatched shapes (`expected`: {name: shape})
  state_shapes(abstract)              -> {name: shape} of an nnx.State (names: path joined by '.')
  fill_state(abstract, flat, source=) -> an nnx.State shaped like `abstract`, filled from `flat`
                                         (checked with check_keys first)
  config_arg(config, released=)       -> a config mapping from a released name, a JSON file or
                                         string, or a mapping / ConfigDict

Reading never unpickles code: `.safetensors` files are parsed directly (bfloat16 through ml_dtypes,
which jax ships), and PyTorch files (`.bin`, `.pt`, `.pth`, `.ckpt`) go through
`torch.load(..., weights_only=True)`, with torch imported only then (torch is not a jaxtok
dependency; a clear error says so when it is missing).
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

__all__ = ["read_checkpoint", "check_keys", "state_shapes", "fill_state", "config_arg",
           "TORCH_SUFFIXES"]

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
  body = memoryview(data)[8 + n:]
  tensors = {}
  for key, info in header.items():
    dtype = info.get("dtype")
    if dtype == "BF16":
      import ml_dtypes
      np_dtype = np.dtype(ml_dtypes.bfloat16)
    elif dtype in _ST_DTYPES:
      np_dtype = np.dtype(_ST_DTYPES[dtype])
    else:
      raise ValueError(f"{path}: tensor {key!r} has unsupported dtype {dtype!r}")
    start, end = info["data_offsets"]
    shape = tuple(int(s) for s in info["shape"])
    size = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    if end - start != size or end > len(body):
      raise ValueError(f"{path}: tensor {key!r} is truncated or corrupt "
                       f"({min(end, len(body)) - start} bytes for {dtype} {list(shape)})")
    tensors[key] = np.frombuffer(body[start:end], np_dtype.newbyteorder("<")).reshape(shape).copy()
  return tensors, {str(k): str(v) for k, v in metadata.items()}


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


def fill_state(abstract, flat: Mapping[str, Any], *, source: str = "checkpoint"):
  """An nnx.State shaped like `abstract` whose every variable is `flat[name]` (name: the variable's
  path joined by '.'), cast to the variable's dtype. Raises the check_keys ValueError first."""
  import jax.numpy as jnp
  from flax import nnx
  entries = list(nnx.to_flat_state(abstract))
  check_keys({_name(p): tuple(v.shape) for p, v in entries}, flat, source=source)
  return nnx.from_flat_state([(p, v.replace(jnp.asarray(np.asarray(flat[_name(p)]), v.dtype)))
                              for p, v in entries])


def config_arg(config: Any, released: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
  """A config dict from a name in `released`, a path to a JSON file, a JSON object as a string, or
  a mapping / ConfigDict (copied). Raises ValueError for anything else."""
  released = released or {}
  if isinstance(config, (str, os.PathLike)):
    text = os.fspath(config)
    if text in released:
      return dict(released[text])
    if os.path.isfile(text):
      with open(text) as f:
        config = json.load(f)
    elif text.lstrip().startswith("{"):
      config = json.loads(text)
    else:
      known = f"a released name ({', '.join(sorted(released))}), " if released else ""
      raise ValueError(f"config {text!r} is neither {known}a JSON file nor a JSON object")
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  if not isinstance(config, Mapping):
    raise ValueError(f"config must be a mapping, a name or JSON, got {type(config).__name__}")
  return dict(config)
