"""The train state pytree and its sharded initialisation.

TrainState is a plain dict (orbax writes it as a nested tree; keys are present only when enabled):
  step            int32 []          optimizer steps taken
  params          nnx.State         trainable parameters (nnx.Param) of the tokenizer
  model_state     nnx.State         non-parameter variables of the tokenizer (e.g. EMA codebooks);
                                    only when the model has any
  opt_state       optax state       same tree as params for Adam's moments
  ema_params      nnx.State         EMA of params (config.ema_decay > 0)
  disc_params     nnx.State         discriminator parameters (config.disc enabled)
  disc_opt_state  optax state
  lecam_state     dict              EMA of the discriminator's mean real/fake logits (LeCAM)

The run's base rng is not in the state: it is a pure function of config.seed, and the per-step key is
`fold_in(base, state["step"])` inside the step, so a resumed run draws the same keys.

Initialisation never materialises an unsharded state: `jax.eval_shape` gives the abstract state, the
logical axis names carried by the nnx Variables give the shardings (`jaxtok.sharding.state_shardings`,
rules from the config; with `embed -> fsdp` the parameters and Adam moments are FSDP-sharded), and the
init function is jitted with those `out_shardings`.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxtok import sharding as shd

TrainState = dict


class ModelDef(NamedTuple):
  """What the trainer needs of a network: its graphdef and a pure `init(rng) -> nnx.State`.

  A `jaxtok.tokenizers.api.Tokenizer` satisfies this protocol (it has both attributes).
  """
  graphdef: Any
  init: Callable[[jax.Array], nnx.State]


def model_def(make: Callable[[nnx.Rngs], nnx.Module]) -> ModelDef:
  """ModelDef of the module built by `make(rngs)` (the graphdef comes from an abstract build)."""
  graphdef = nnx.split(nnx.eval_shape(lambda: make(nnx.Rngs(0))))[0]

  def init(rng: jax.Array) -> nnx.State:
    return nnx.split(make(nnx.Rngs(rng)))[1]

  return ModelDef(graphdef, init)


def split_params(full: nnx.State) -> tuple[nnx.State, nnx.State]:
  """(nnx.Param variables, all other variables) of a model state."""
  return nnx.filter_state(full, nnx.Param), nnx.filter_state(full, nnx.Not(nnx.Param))


def rules_from_config(config: Any) -> tuple[tuple[str, Any], ...]:
  """The logical->mesh rules of `config.sharding_rules` (lists made tuples), or DEFAULT_RULES."""
  rules = config.get("sharding_rules", None) if hasattr(config, "get") else None
  if rules is None:
    return shd.DEFAULT_RULES
  out = []
  for entry in rules:
    if len(entry) != 2:
      raise ValueError(f"config.sharding_rules entries must be (logical_name, mesh_axes), got {entry!r}")
    name, axes = entry
    out.append((str(name), tuple(axes) if isinstance(axes, (list, tuple)) else axes))
  return tuple(out)


def mesh_from_config(config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The mesh of `config.mesh` ([(axis, size)], one size may be -1)."""
  spec = config.get("mesh", None) if hasattr(config, "get") else None
  spec = [tuple(e) for e in spec] if spec is not None else (("data", -1), ("fsdp", 1), ("tensor", 1))
  for name, _ in spec:
    if name not in shd.MESH_AXES:
      raise ValueError(f"config.mesh axis names must be among {shd.MESH_AXES}, got {name!r}")
  return shd.make_mesh(spec, devices)


def make_init_fn(model: ModelDef, tx: optax.GradientTransformation, *, ema: bool = False,
                 disc: ModelDef | None = None,
                 disc_tx: optax.GradientTransformation | None = None) -> Callable[[jax.Array], TrainState]:
  """A pure `init(rng) -> TrainState` (jit it with out_shardings; see `init_train_state`)."""
  if disc is not None and disc_tx is None:
    raise ValueError("a discriminator needs its optimizer: disc_tx is None")

  def init(rng: jax.Array) -> TrainState:
    k_model, k_disc = jax.random.split(rng)
    params, model_state = split_params(model.init(k_model))
    state: TrainState = {"step": jnp.zeros((), jnp.int32), "params": params,
                         "opt_state": tx.init(params)}
    if jax.tree.leaves(model_state):
      state["model_state"] = model_state
    if ema:
      state["ema_params"] = jax.tree.map(jnp.copy, params)
    if disc is not None:
      d_params, _ = split_params(disc.init(k_disc))
      state["disc_params"] = d_params
      state["disc_opt_state"] = disc_tx.init(d_params)
      state["lecam_state"] = {"real": jnp.zeros((), jnp.float32), "fake": jnp.zeros((), jnp.float32)}
    return state

  return init


def shardings_of(abstract_state: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
  """NamedShardings for every leaf of a (possibly abstract) TrainState, from the logical names."""
  return shd.state_shardings(abstract_state, mesh, rules)


def with_shardings(abstract_state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings (an orbax restore target)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_state, shardings)


def init_train_state(init_fn: Callable[[jax.Array], TrainState], rng: jax.Array, mesh: Mesh,
                     rules: Sequence[tuple[str, Any]] = shd.DEFAULT_RULES) -> tuple[TrainState, Any, Any]:
  """Sharded initialisation: eval_shape -> shardings -> jit(init, out_shardings).

  Returns:
    (state, shardings, abstract_state_with_shardings).
  """
  abstract = jax.eval_shape(init_fn, rng)
  shardings = shardings_of(abstract, mesh, rules)
  state = jax.jit(init_fn, out_shardings=shardings)(rng)
  return state, shardings, with_shardings(abstract, shardings)


def abstract_train_state(init_fn: Callable[[jax.Array], TrainState], rng: jax.Array, mesh: Mesh,
                         rules: Sequence[tuple[str, Any]] = shd.DEFAULT_RULES) -> tuple[Any, Any]:
  """(abstract state with shardings, shardings) without allocating anything (for restore)."""
  abstract = jax.eval_shape(init_fn, rng)
  shardings = shardings_of(abstract, mesh, rules)
  return with_shardings(abstract, shardings), shardings


def param_count(state: TrainState) -> int:
  return int(sum(x.size for x in jax.tree.leaves(state["params"])))
