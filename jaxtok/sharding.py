"""Logical sharding: one vocabulary of axis names for parameters and activations, mapped to mesh axes.

Parameters are created with logical axis names as metadata (`logical_init`), never with mesh axes:
the same model then runs on any mesh, and a rules table (in the config) decides the layout.

Because jaxtok's names (`embed`, `mlp`, ...) are not mesh axes, Flax's eager sharding (which would try
to place each variable on a mesh at creation) is switched off for each parameter `logical_init`
makes (its own `eager_sharding=False` metadata; Flax's global setting is left as the user set it);
shardings are derived from the metadata with `state_shardings` and applied by
`jax.jit(..., out_shardings=...)`.

Weight axes: embed, mlp, heads, kv, vocab, codebook, conv_in, conv_out, layers, patch.
Activation axes: act_batch, act_seq, act_embed, act_heads, act_vocab. Models pin their activations
with `constrain(x, names)`; it acts only under a mesh (`jax.set_mesh`) with Auto axes, using the
rules of the innermost `activation_rules(...)` block (DEFAULT_RULES outside one), and is the
identity otherwise, so the same model runs unsharded, in tests, and on any mesh.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axis (or tuple of axes, or None for replicated). Batch goes over data and fsdp;
# weights are split over fsdp along their embedding axis and over tensor along heads/mlp/vocab.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("act_batch", ("data", "fsdp")),
    ("act_seq", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("codebook", None),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("layers", None),
    ("patch", None),
)


def logical_init(init: Callable, *names: str | None) -> Callable:
  """Wraps an initializer so the parameter it makes carries logical axis `names` (one per dim)."""
  return nnx.with_partitioning(init, tuple(names), eager_sharding=False)


def make_mesh(spec: Sequence[tuple[str, int]] = (("data", -1), ("fsdp", 1), ("tensor", 1)),
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Makes a mesh from [(axis_name, size)], where one size may be -1 to take the remaining devices.

  Raises:
    ValueError: if the sizes do not multiply to the device count or more than one size is -1.
  """
  devices = list(devices if devices is not None else jax.devices())
  names = [name for name, _ in spec]
  sizes = [int(size) for _, size in spec]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh spec may hold at most one -1 size, got {list(spec)}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"mesh spec {list(spec)} does not divide the {len(devices)} devices")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(
        f"mesh spec {list(spec)} needs {int(np.prod(sizes))} devices, but {len(devices)} are given")
  return Mesh(np.asarray(devices).reshape(sizes), tuple(names))


def logical_to_mesh(names: Sequence[str | None] | P, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES,
                    mesh: Mesh | None = None) -> P:
  """Maps logical axis names to a PartitionSpec of mesh axes.

  A mesh axis is used at most once (a later dimension that maps to an axis already taken stays
  replicated), and axes absent from `mesh` or of size 1 are dropped.
  """
  table = dict(rules)
  used: set[str] = set()
  out = []
  for name in tuple(names):
    target = table.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    keep = tuple(a for a in axes if a not in used and (mesh is None or mesh.shape.get(a, 1) > 1))
    used.update(keep)
    out.append(None if not keep else keep[0] if len(keep) == 1 else keep)
  return P(*out)


def state_shardings(state: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> Any:
  """NamedShardings for an nnx.State (or abstract state) from its parameters' logical names.

  Variables without names are replicated; empty nodes (optax `MaskedNode`s, the moments that a
  `multi_transform` does not keep for frozen parameters) stay as they are. A dimension whose size the mesh axes do not divide is left
  replicated rather than failing at run time.
  """
  specs = nnx.get_partition_spec(state)

  def to_sharding(leaf_spec, leaf):
    if not hasattr(leaf, "shape") and not jax.tree.leaves(leaf):
      return leaf  # an empty node (optax's MaskedNode for a frozen parameter's Adam moment)
    spec = logical_to_mesh(leaf_spec if isinstance(leaf_spec, P) else P(), rules, mesh)
    return NamedSharding(mesh, _fit(spec, getattr(leaf, "shape", ()), mesh))

  # A spec of None sits where the state holds an empty node inside an already-masked optimizer state
  # (a frozen parameter excluded from weight decay too: MaskedNode under a mask); treat it as a leaf
  # so the whole node is passed to to_sharding, which keeps it.
  return jax.tree.map(to_sharding, specs, state, is_leaf=lambda x: isinstance(x, P) or x is None)


def _fit(spec: P, shape: Sequence[int], mesh: Any) -> P:
  """spec with every dimension that its mesh axes do not divide (or that they leave whole) replicated."""
  fixed = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    group = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = int(np.prod([mesh.shape[a] for a in group])) if group else 1
    fixed.append(axes if size > 1 and dim % size == 0 else None)
  return P(*fixed)


_ACTIVATION_RULES: contextvars.ContextVar = contextvars.ContextVar("activation_rules",
                                                                  default=DEFAULT_RULES)


@contextlib.contextmanager
def activation_rules(rules: Sequence[tuple[str, Any]]) -> Iterator[None]:
  """Within the block, `constrain` maps activation names with `rules`.

  The rules are read when a function is traced, and jax.jit reuses its traces: enter the block
  before a jitted function's first call (or jit a fresh function inside it).
  """
  token = _ACTIVATION_RULES.set(tuple((n, tuple(a) if isinstance(a, list) else a) for n, a in rules))
  try:
    yield
  finally:
    _ACTIVATION_RULES.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """x pinned to the layout of its logical activation axes (one name per dim, e.g. act_batch).

  The identity without a mesh in context or when the mesh has non-Auto (Explicit/Manual) axes, whose
  layout is already part of the array's type. Dimensions the mesh axes do not divide stay replicated.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or any(t != jax.sharding.AxisType.Auto for t in mesh.axis_types):
    return x
  spec = _fit(logical_to_mesh(names, _ACTIVATION_RULES.get(), mesh), x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, spec)


def batch_sharding(mesh: Mesh, ndim: int, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> NamedSharding:
  """Sharding of a batch of rank `ndim` split over the batch axis (`act_batch`) and replicated elsewhere."""
  return NamedSharding(mesh, logical_to_mesh(("act_batch",) + (None,) * (ndim - 1), rules, mesh))
