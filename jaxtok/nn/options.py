"""The options every transformer model takes from its config, and strict config keys.

Common keys (honoured by every model built on `nn.Stack`):
  dtype           compute dtype, "float32" (default) or "bfloat16"; parameters stay float32.
  remat           "none" | "full" | "dots" (or a bool), see `nn.stack`.
  scan_layers     scan over stacked blocks (one compiled block) instead of unrolling.
  attention_impl  None | "xla" | "cudnn", the `jax.nn.dot_product_attention` kernel.
`model_kwargs` turns a config into constructor keyword arguments and raises ValueError, listing the
valid keys, for any key the model does not know, so a typo is never silently ignored.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax.numpy as jnp

from jaxtok.nn.attention import check_implementation
from jaxtok.nn.stack import check_remat

COMMON = ("dtype", "remat", "scan_layers", "attention_impl")


def compute_dtype(value: Any) -> Any:
  """'float32' / 'bfloat16' / a floating dtype -> its jnp scalar type (None -> float32)."""
  if value is None:
    return jnp.float32
  dt = jnp.dtype(value)
  if not jnp.issubdtype(dt, jnp.floating):
    raise ValueError(f"dtype must be a floating dtype (float32, bfloat16), got {value!r}")
  return dt.type


def common_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
  """{dtype, remat, scan_layers, attention_impl} of cfg, checked, with their defaults."""
  impl = cfg.get("attention_impl")
  check_implementation(impl)
  return dict(dtype=compute_dtype(cfg.get("dtype")), remat=check_remat(cfg.get("remat", "none")),
              scan_layers=bool(cfg.get("scan_layers", False)), attention_impl=impl)


def model_kwargs(cfg: Any, fields: Sequence[str], *, model: str,
                 extra: Sequence[str] = ("name",)) -> dict[str, Any]:
  """Constructor kwargs from cfg (a Mapping or ConfigDict): its `fields` that are not None, plus the
  common options. Keys in `extra` are accepted and dropped (e.g. the registry's `name`).

  Raises:
    ValueError: for a key outside fields, COMMON and extra, naming the valid ones.
  """
  cfg = dict(cfg.to_dict()) if hasattr(cfg, "to_dict") else dict(cfg)
  valid = set(fields) | set(COMMON) | set(extra)
  unknown = sorted(set(cfg) - valid)
  if unknown:
    raise ValueError(f"unknown {model} config key(s) {unknown}; valid keys: {sorted(valid)}")
  kwargs = {k: cfg[k] for k in fields if cfg.get(k) is not None}
  kwargs.update(common_options(cfg))
  return kwargs
