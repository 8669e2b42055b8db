"""The discrete bottleneck of a tokenizer: every quantizer of `jaxtok.quantizers` behind one interface.

A tokenizer picks it by name (`quantizer` = vq | fsq | lfq | bsq | rvq | rfsq | binary) plus a dict
of `quantizer_options`, and holds it as a static `Bottleneck` spec. The variables it needs live on
the tokenizer itself under fixed names, so that a vq tokenizer keeps its `codebook` parameter at the
top level (the released checkpoints' converters and saved runs depend on that name):

  kind     variables on the tokenizer                            tokens (one image)   ids in
  vq       codebook [C, D] (nnx.Param; QuantizerState when ema,  [K]                  [0, C)
           plus codebook_cluster_size [C], codebook_embed_sum
           [C, D], codebook_initialized [])
  rvq      codebook [Q, C, D] nnx.Param (one codebook per level) [K, Q]               [0, C)
  fsq      none (levels)                                         [K]                  [0, prod(levels))
  rfsq     none (symmetric levels, Q scales)                     [K, Q]               [0, prod(levels))
  lfq/bsq  none (sign of each of D <= 31 channels)               [K]                  [0, 2^D)
  binary   none (D bits; packed MSB-first when D <= 31)          [K] or [K, D] bits   [0, 2^D) or {0, 1}

`codebook_size` is the number of distinct ids one token entry takes (the generators' vocabulary and
the decode id check); `token_shape` the trailing axes a token has beyond [B, K] (() for one id per
token, (Q,) for residual levels, (D,) for unpacked bits).

Options (`OPTIONS`, per kind; unknown keys or wrong types raise ValueError naming them). Cosine codes
for vq/rvq come from the tokenizer's `use_l2_norm` field, levels from `fsq_levels`, C from
`codebook_size`, the commitment weight from `commitment_cost`:
  vq:  ema, ema_decay, kmeans_init, kmeans_iters, dead_code_restart, dead_code_threshold,
       rotation_trick, entropy_weight, entropy_temperature, entropy_gamma
  rvq: num_quantizers, rotation_trick, entropy_weight, entropy_temperature, entropy_gamma
  fsq: symmetric;  rfsq: num_quantizers
  lfq, bsq: entropy_weight, inv_temperature, diversity_gamma, group_size (0 = D)
  binary: temperature, aux_weight

VQ training state. With `ema` the codebook is learnt by exponential moving averages, not by gradient:
it and its statistics are `QuantizerState` variables (not nnx.Param), so the train state keeps them
in `model_state`, and the tokenizer's `train_forward` writes their new values (`train_quantize`
returns them; the train step reads the non-Param variables back after the pass). The order in a
training pass is: k-means init from the batch when not yet initialised (`kmeans_init`), quantize
(commitment loss only), EMA update, dead-code restart (`dead_code_restart`: codes whose EMA count is
below `dead_code_threshold` take random encoder outputs). k-means init and dead-code restart rewrite
the codebook outside the gradient, so they need `ema=True`. `encode` never changes the state.

RobusTok perturbation (`perturb`) is defined for vq (nearest codebook entries) and fsq (level-grid
neighbours); other kinds raise ValueError.

Dimension names: B batch, K tokens, D token dimension, C codebook size, Q residual levels.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.quantizers import base, binary, fsq, lfq, residual, vq
from jaxtok.quantizers import perturb as perturb_lib
from jaxtok.sharding import logical_init

KINDS = ("vq", "fsq", "lfq", "bsq", "rvq", "rfsq", "binary")

_ENTROPY = dict(entropy_weight=0.0, entropy_temperature=0.01, entropy_gamma=1.0)
_SIGN = dict(entropy_weight=0.1, inv_temperature=100.0, diversity_gamma=1.0, group_size=0)
# Per kind: option -> default (its type is the default's; an int is accepted for a float).
OPTIONS: dict[str, dict[str, Any]] = {
    "vq": dict(ema=False, ema_decay=0.99, kmeans_init=False, kmeans_iters=10,
               dead_code_restart=False, dead_code_threshold=1.0, rotation_trick=False, **_ENTROPY),
    "rvq": dict(num_quantizers=2, rotation_trick=False, **_ENTROPY),
    "fsq": dict(symmetric=False),
    "rfsq": dict(num_quantizers=2),
    "lfq": dict(_SIGN),
    "bsq": dict(_SIGN),
    "binary": dict(temperature=0.1, aux_weight=1.0),
}
# Names of the VQ-EMA variables on the tokenizer, in VQState field order.
EMA_NAMES = ("codebook", "codebook_cluster_size", "codebook_embed_sum", "codebook_initialized")


class QuantizerState(nnx.Variable):
  """A quantizer variable updated outside the gradient (EMA codebook and its statistics)."""


def symmetric_uniform(bound: float):
  """uniform(-bound, bound): the reference codebook init (bound 1/C)."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def check_options(kind: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
  """The full option dict of `kind` (defaults filled in), or ValueError naming a bad key or value."""
  if kind not in KINDS:
    raise ValueError(f"quantizer must be one of {KINDS}, got {kind!r}")
  if options is None:
    options = {}
  if not isinstance(options, Mapping):
    raise TypeError(f"quantizer_options must be a dict, got {type(options).__name__} ({options!r})")
  allowed = OPTIONS[kind]
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise ValueError(f"unknown quantizer_options {unknown} for quantizer {kind!r}; valid: "
                     f"{sorted(allowed)}")
  out = dict(allowed)
  for key, value in options.items():
    default = allowed[key]
    if isinstance(default, bool):
      ok = isinstance(value, bool)
    elif isinstance(default, int):
      ok = isinstance(value, int) and not isinstance(value, bool)
    else:
      ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
      raise ValueError(f"quantizer_options[{key!r}] must be {type(default).__name__}, got "
                       f"{value!r} ({type(value).__name__})")
    out[key] = type(default)(value)
  for key in ("ema_decay",):
    if key in out and not 0.0 <= out[key] <= 1.0:
      raise ValueError(f"quantizer_options[{key!r}] must lie in [0, 1], got {out[key]}")
  for key in ("num_quantizers", "kmeans_iters"):
    if key in out and out[key] < 1:
      raise ValueError(f"quantizer_options[{key!r}] must be >= 1, got {out[key]}")
  for key in ("dead_code_threshold", "temperature", "inv_temperature", "entropy_temperature"):
    if key in out and out[key] <= 0:
      raise ValueError(f"quantizer_options[{key!r}] must be > 0, got {out[key]}")
  if kind == "vq" and not out["ema"]:
    for key in ("kmeans_init", "dead_code_restart"):
      if out[key]:
        raise ValueError(f"quantizer_options[{key!r}] rewrites the codebook outside the gradient "
                         f"and needs ema=True, got ema=False")
  return out


@dataclasses.dataclass(frozen=True)
class Bottleneck:
  """A static, hashable description of a discrete bottleneck (see the module docstring).

  Attributes:
    kind: one of KINDS.
    dim: D, the token dimension (channels of z).
    codebook_size: C (vq, rvq), ignored by the others.
    levels: FSQ levels (fsq, rfsq), D ints.
    cosine: l2-normalised codes (vq, rvq).
    commitment_cost: weight of the commitment loss (vq, rvq, lfq, bsq).
    options: the checked options as sorted (key, value) pairs.
  """
  kind: str
  dim: int
  codebook_size_: int = 0
  levels: tuple[int, ...] = ()
  cosine: bool = False
  commitment_cost: float = 0.25
  options: tuple[tuple[str, Any], ...] = ()

  @classmethod
  def create(cls, kind: str, dim: int, *, codebook_size: int = 0, levels: Sequence[int] = (),
             cosine: bool = False, commitment_cost: float = 0.25,
             options: Mapping[str, Any] | None = None) -> Bottleneck:
    """Checks every argument against `kind` and returns the spec (ValueError naming the bad one)."""
    opts = check_options(kind, options)
    dim = base.check_positive_int("token dimension (token_size / z_channels)", dim)
    levels = tuple(int(v) for v in levels)
    if kind in ("vq", "rvq"):
      base.check_positive_int("codebook_size", codebook_size, minimum=2)
    if kind in ("fsq", "rfsq"):
      levels = fsq.check_levels(levels, symmetric=kind == "rfsq" or opts.get("symmetric", False))
      if len(levels) != dim:
        raise ValueError(f"fsq_levels must have {dim} entries (the token dimension), got {levels}")
    if kind in ("lfq", "bsq"):
      if dim > lfq.MAX_INDEX_BITS:
        raise ValueError(f"quantizer {kind!r} needs a token dimension <= {lfq.MAX_INDEX_BITS} "
                         f"(one int32 id per token), got {dim}")
      group = opts["group_size"] or dim
      if dim % group:
        raise ValueError(f"quantizer_options['group_size'] must divide the token dimension {dim}, "
                         f"got {group}")
      if opts["entropy_weight"] > 0 and group > lfq.MAX_GROUP_BITS:
        raise ValueError(f"quantizer {kind!r} with entropy_weight > 0 needs group_size <= "
                         f"{lfq.MAX_GROUP_BITS} (set quantizer_options['group_size']), got {group}")
    return cls(kind=kind, dim=dim, codebook_size_=int(codebook_size), levels=levels,
               cosine=bool(cosine), commitment_cost=float(commitment_cost),
               options=tuple(sorted(opts.items())))

  # ---- shapes

  @property
  def opts(self) -> dict[str, Any]:
    return dict(self.options)

  @property
  def codebook_size(self) -> int:
    """Distinct ids one token entry takes (generator vocabulary, decode id check)."""
    if self.kind in ("vq", "rvq"):
      return self.codebook_size_
    if self.kind in ("fsq", "rfsq"):
      return math.prod(self.levels)
    if self.kind == "binary" and not binary.packed(self.dim):
      return 2
    return 2**self.dim

  @property
  def token_shape(self) -> tuple[int, ...]:
    """Trailing axes of the tokens beyond [B, K]."""
    if self.kind in ("rvq", "rfsq"):
      return (self.opts["num_quantizers"],)
    if self.kind == "binary" and not binary.packed(self.dim):
      return (self.dim,)
    return ()

  @property
  def ema(self) -> bool:
    return self.kind == "vq" and self.opts["ema"]

  # ---- variables

  def make_variables(self, rngs: nnx.Rngs) -> dict[str, nnx.Variable]:
    """The variables the tokenizer stores under these names (see the module docstring)."""
    if self.kind not in ("vq", "rvq"):
      return {}
    c, d = self.codebook_size_, self.dim
    shape = (c, d) if self.kind == "vq" else (self.opts["num_quantizers"], c, d)
    names = ("codebook", None) if self.kind == "vq" else (None, "codebook", None)
    init = logical_init(symmetric_uniform(1.0 / c), *names)
    if not self.ema:
      return {"codebook": nnx.Param(init(rngs.params(), shape, jnp.float32))}
    codebook = symmetric_uniform(1.0 / c)(rngs.params(), shape, jnp.float32)
    # cluster_size 1 and embed_sum = codebook: the first EMA step is consistent (vq.init_state).
    return {"codebook": QuantizerState(codebook),
            "codebook_cluster_size": QuantizerState(jnp.ones((c,), jnp.float32)),
            # A separate buffer: the train step donates the state, leaf by leaf.
            "codebook_embed_sum": QuantizerState(jnp.copy(codebook)),
            "codebook_initialized": QuantizerState(jnp.asarray(not self.opts["kmeans_init"]))}

  def _vq_state(self, values: Mapping[str, jax.Array]) -> vq.VQState:
    cb = values["codebook"]
    if self.ema:
      return vq.VQState(*(values[n] for n in EMA_NAMES))
    # Gradient-trained: the statistics are unused by quantize / lookup.
    return vq.VQState(cb, jnp.zeros(cb.shape[:-1], jnp.float32), cb, jnp.asarray(True))

  def _rvq_states(self, values):
    cb = values["codebook"]
    return [vq.VQState(cb[i], jnp.zeros(cb.shape[1:2], jnp.float32), cb[i], jnp.asarray(True))
            for i in range(cb.shape[0])]

  def _vq_kwargs(self) -> dict[str, Any]:
    o = self.opts
    kw = dict(beta=self.commitment_cost, codebook_weight=0.0 if self.ema else 1.0,
              cosine=self.cosine, rotation_trick=o["rotation_trick"],
              entropy_weight=o["entropy_weight"], entropy_temperature=o["entropy_temperature"],
              entropy_gamma=o["entropy_gamma"])
    return kw

  # ---- forward

  def quantize(self, values: Mapping[str, jax.Array], z: jax.Array, *, rng: jax.Array | None,
               train: bool) -> tuple[jax.Array, jax.Array, dict, dict]:
    """z float32 [B, K, D] -> (indices int32 [B, K, *token_shape], codes [B, K, D] (straight-through
    or rotation trick), losses (weighted float32 scalars), metrics (usage, perplexity, ...)).

    values: the tokenizer's variables by name (`make_variables`). Pure: no state is updated.
    rng: needed for binary with train=True (Bernoulli bits); unused by the others.
    """
    k, o = self.kind, self.opts
    if k == "vq":
      out = vq.quantize(z, self._vq_state(values), **self._vq_kwargs())
    elif k == "rvq":
      out = residual.rvq_quantize(z, self._rvq_states(values), rng=rng, train=train,
                                  **self._vq_kwargs())
    elif k == "fsq":
      out = fsq.quantize(z, self.levels, symmetric=o["symmetric"])
    elif k == "rfsq":
      out = residual.rfsq_quantize(z, self.levels, o["num_quantizers"], rng=rng, train=train)
    elif k in ("lfq", "bsq"):
      out = lfq.quantize(z, inv_temperature=o["inv_temperature"],
                         entropy_weight=o["entropy_weight"], diversity_gamma=o["diversity_gamma"],
                         commitment_weight=self.commitment_cost,
                         group_size=o["group_size"] or None, spherical=k == "bsq")
    else:
      out = binary.quantize(z, rng=rng, train=train, temperature=o["temperature"],
                            aux_weight=o["aux_weight"])
    return out.indices, out.codes, dict(out.losses), dict(out.metrics)

  def train_quantize(self, values: Mapping[str, jax.Array], z: jax.Array, rng: jax.Array
                     ) -> tuple[jax.Array, jax.Array, dict, dict, dict[str, jax.Array]]:
    """The training pass: `quantize(train=True)` plus the VQ state updates (k-means init, EMA,
    dead-code restart, in that order; see the module docstring).

    Returns:
      (indices, codes, losses, metrics, new_values): new_values holds the new value of every
      non-parameter variable (empty unless vq with ema); the caller writes them back.
    """
    k_init, k_quant, k_dead = jax.random.split(rng, 3)
    if not self.ema:
      return self.quantize(values, z, rng=k_quant, train=True) + ({},)
    o, x = self.opts, jax.lax.stop_gradient(z)
    state = self._vq_state(values)
    if o["kmeans_init"]:
      state = vq.maybe_kmeans_init(state, x, k_init, iters=o["kmeans_iters"], cosine=self.cosine)
    indices, codes, losses, metrics = self.quantize(
        {n: v for n, v in zip(EMA_NAMES, state)}, z, rng=k_quant, train=True)
    state = vq.ema_update(state, x, indices, decay=o["ema_decay"], cosine=self.cosine)
    if o["dead_code_restart"]:
      dead = state.cluster_size < o["dead_code_threshold"]
      metrics["dead_codes"] = jnp.sum(dead.astype(jnp.float32))
      state = vq.restart_dead_codes(state, x, k_dead, threshold=o["dead_code_threshold"],
                                    cosine=self.cosine)
    return indices, codes, losses, metrics, dict(zip(EMA_NAMES, state))

  # ---- tokens

  def check_tokens(self, tokens: Any, max_tokens: int) -> None:
    """TypeError/ValueError unless tokens are int [B, K', *token_shape] with 1 <= K' <= max_tokens
    and (when concrete) every id in [0, codebook_size)."""
    shape = "[B, K" + "".join(f", {n}" for n in self.token_shape) + "]"
    rank = 2 + len(self.token_shape)
    if not hasattr(tokens, "shape") or tokens.ndim != rank \
        or tuple(tokens.shape[2:]) != self.token_shape:
      raise ValueError(f"tokens must have shape {shape} int for quantizer {self.kind!r}, got "
                       f"{getattr(tokens, 'shape', type(tokens).__name__)}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise TypeError(f"tokens must be integer for quantizer {self.kind!r}, got {tokens.dtype}")
    if not 1 <= tokens.shape[1] <= max_tokens:
      raise ValueError(f"tokens must hold between 1 and {max_tokens} tokens, got shape "
                       f"{tuple(tokens.shape)}")
    base.check_indices("tokens", tokens, self.codebook_size)

  def indices_to_codes(self, values: Mapping[str, jax.Array], tokens: jax.Array) -> jax.Array:
    """Tokens int [B, K', *token_shape] -> codes float32 [B, K', D] (the values `quantize` gives)."""
    k = self.kind
    if k == "vq":
      return vq.indices_to_codes(tokens, self._vq_state(values), cosine=self.cosine)
    if k == "rvq":
      return residual.rvq_indices_to_codes(tokens, self._rvq_states(values), cosine=self.cosine)
    if k == "fsq":
      return fsq.indices_to_codes(tokens, self.levels, symmetric=self.opts["symmetric"])
    if k == "rfsq":
      return residual.rfsq_indices_to_codes(tokens, self.levels)
    if k in ("lfq", "bsq"):
      return lfq.indices_to_codes(tokens, self.dim, spherical=k == "bsq")
    return binary.indices_to_codes(tokens, self.dim)

  def perturb(self, values: Mapping[str, jax.Array], settings: dict, step: Any, rng: jax.Array,
              z: jax.Array, codes: jax.Array, indices: jax.Array) -> tuple[jax.Array, dict]:
    """RobusTok perturbation of the codes (`quantizers.perturb.apply`): vq and fsq only."""
    if self.kind == "vq":
      book = dict(codebook=values["codebook"], cosine=self.cosine)
    elif self.kind == "fsq":
      book = dict(fsq_levels=self.levels, symmetric=self.opts["symmetric"])
    else:
      raise ValueError(f"RobusTok perturbation is defined for quantizer 'vq' (nearest codebook "
                       f"entries) and 'fsq' (level-grid neighbours), got quantizer {self.kind!r}")
    return perturb_lib.apply(settings, step, rng, z, codes, indices, **book)


def read(owner: nnx.Module, spec: Bottleneck) -> dict[str, jax.Array]:
  """The current values of the bottleneck's variables stored on `owner`."""
  names = EMA_NAMES if spec.ema else ("codebook",) if spec.kind in ("vq", "rvq") else ()
  return {n: getattr(owner, n).get_value() for n in names}


def write(owner: nnx.Module, new_values: Mapping[str, jax.Array]) -> None:
  """Stores the values `train_quantize` returned into `owner`'s variables (same dtypes)."""
  for name, value in new_values.items():
    var = getattr(owner, name)
    var.set_value(jnp.asarray(value, var.get_value().dtype))
