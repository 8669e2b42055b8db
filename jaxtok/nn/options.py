"""The options every transformer model takes from its config, and strict config keys.

Common keys (honoured by every model built on `nn.Stack`):
  dtype           compute dtype, "float32" (default) or "bfloat16"; parameters stay float32.
  remat           "none" | "full" | "dots" (or a bool), see `nn.stack`.
  scan_layers     scan over stacked blocks (one compiled block) instead of unrolling.
  attention_impl  None | "xla" | "cudnn", the `jax.nn.dot_product_attention` kernel.
`model_kwargs` turns a config into constructor keyword arguments and raises ValueError, listing the
valid keys, for any key the model does not know, so a typo is never silently ignored; given the
model class it also checks each value against the constructor's annotation (int, float, bool, str,
sequences of ints, optionally None): the constructor's signature is the model's typed config.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

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


def _is_int(v: Any) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


# Annotation (as written in a constructor) -> test of a config value.
_TYPES = {
    "int": _is_int,
    "float": lambda v: _is_int(v) or isinstance(v, (float, np.floating)),
    "bool": lambda v: isinstance(v, (bool, np.bool_)),
    "str": lambda v: isinstance(v, str),
    "None": lambda v: v is None,
}
_TYPES.update({seq: lambda v: isinstance(v, (list, tuple)) and all(_is_int(x) for x in v)
               for seq in ("Sequence[int]", "tuple[int,...]", "tuple[int]", "list[int]")})


def _init_parameters(cls: type) -> dict[str, inspect.Parameter]:
  """The keyword parameters of cls.__init__ and of the base-class __init__s it forwards **kwargs to
  (a subclass adding a few fields over its base's constructor), the most derived annotation first."""
  params: dict[str, inspect.Parameter] = {}
  for klass in cls.__mro__:
    init = klass.__dict__.get("__init__")
    if init is None or klass is object:
      continue
    try:
      sig = inspect.signature(init).parameters
    except (TypeError, ValueError):
      continue
    for name, p in sig.items():
      params.setdefault(name, p)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values()):
      break
  return params


def check_types(cls: type, kwargs: Mapping[str, Any], *, model: str) -> None:
  """Raises ValueError naming the key, the annotated type and the value for every kwarg whose value
  does not fit cls.__init__'s annotation (annotations outside _TYPES, e.g. Any or a dtype, pass)."""
  params = _init_parameters(cls)
  for key, value in kwargs.items():
    if key not in params or params[key].annotation is inspect.Parameter.empty:
      continue
    ann = str(params[key].annotation).replace(" ", "").replace("typing.", "")
    alts = ann.split("|")
    if not all(a in _TYPES for a in alts):
      continue
    if not any(_TYPES[a](value) for a in alts):
      raise ValueError(f"{model} config {key!r} must be {ann}, got {value!r} "
                       f"({type(value).__name__})")


def model_kwargs(cfg: Any, fields: Sequence[str], *, model: str, extra: Sequence[str] = ("name",),
                 cls: type | None = None) -> dict[str, Any]:
  """Constructor kwargs from cfg (a Mapping or ConfigDict): its `fields` that are not None, plus the
  common options. Keys in `extra` are accepted and dropped (e.g. the registry's `name`). With `cls`
  the values are checked against cls.__init__'s annotations (`check_types`).

  Raises:
    ValueError: for a key outside fields, COMMON and extra, naming the valid ones; for a value of
      the wrong type, naming the key, the expected type and the value.
  """
  cfg = dict(cfg.to_dict()) if hasattr(cfg, "to_dict") else dict(cfg)
  valid = set(fields) | set(COMMON) | set(extra)
  unknown = sorted(set(cfg) - valid)
  if unknown:
    raise ValueError(f"unknown {model} config key(s) {unknown}; valid keys: {sorted(valid)}")
  kwargs = {k: cfg[k] for k in fields if cfg.get(k) is not None}
  if cls is not None:
    check_types(cls, kwargs, model=model)
  kwargs.update(common_options(cfg))
  return kwargs


def preset_model_kwargs(cfg: Any, fields: Sequence[str], *, model: str, cls: type,
                        preset) -> dict[str, Any]:
  """`model_kwargs` of a network with named sizes: cfg's optional `size` selects
  `preset(size, kwargs) -> defaults`, which the explicitly given fields override."""
  cfg = dict(cfg.to_dict()) if hasattr(cfg, "to_dict") else dict(cfg)
  size = cfg.pop("size", None)
  kwargs = model_kwargs(cfg, fields, model=model, extra=("name",), cls=cls)
  return kwargs if size is None else {**preset(size, kwargs), **kwargs}


def tower_builders(cls: type, fields: Sequence[str], *, model: str, preset):
  """(make_model(cfg, *, rngs) -> cls, abstract_params(cfg) -> nnx.State) of a frozen feature
  network with named sizes (CLIP text, SigLIP, DINOv2, OLMo): plain fields, `size` for a preset
  (`preset_model_kwargs`), the common options; unknown keys raise ValueError naming the valid ones.
  abstract_params allocates nothing."""

  def make_model(cfg: Any, *, rngs: nnx.Rngs):
    return cls(**preset_model_kwargs(cfg, fields, model=model, cls=cls, preset=preset), rngs=rngs)

  return make_model, lambda cfg: abstract_params(make_model, cfg)


def abstract_params(make_model, cfg: Any) -> nnx.State:
  """The parameter shapes of `make_model(cfg, rngs=...)` (nothing allocated)."""
  return nnx.state(nnx.eval_shape(lambda: make_model(cfg, rngs=nnx.Rngs(0))), nnx.Param)


def frozen_apply(make_model, cfg: Any):
  """fn(params, *inputs) -> `make_model(cfg)(*inputs)` with `params` (an nnx.State) merged into the
  module's graph each call: a frozen network as a pure, jit-friendly function (the parameters are
  only read)."""
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: make_model(cfg, rngs=nnx.Rngs(0))))
  return lambda params, *inputs: nnx.merge(graphdef, params)(*inputs)
