"""The tokenizer contract and its functional facade.

Every tokenizer module `jaxtok.tokenizers.<name>` defines an nnx.Module with
  encode(images, *, num_tokens=None, rng=None, train=False) -> EncodeOutput
  decode(tokens, *, rng=None, train=False) -> images [B, H, W, 3] float32 (nominally [0, 1])
  train_forward(images, *, rng, step=None, target="pixels", perturb=None, num_tokens=None)
      -> TrainOutput
and `make_model(cfg, *, rngs)`. `build(config)` returns a `Tokenizer`: the graphdef plus pure jitted
functions of (params, inputs, rng) that `nnx.merge` inside `jax.jit`, so a training or evaluation
loop never touches module objects. `num_tokens` is static: one compilation per (input shape, token
count).

Dimension names: B batch, H/W image size, K' kept tokens, D code dimension.
"""
from __future__ import annotations

import collections
import importlib
import math
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok import sharding
from jaxtok.nn.options import compute_dtype  # noqa: F401  (re-exported: the tokenizers' dtype parser)
from jaxtok.quantizers import base
from jaxtok.samplers import guidance


class EncodeOutput(NamedTuple):
  """What `encode` returns (a pytree).

  Attributes:
    tokens: int32 [B, K'] (discrete) or float [B, K', D] (continuous).
    codes: float [B, K', D] quantized vectors, straight-through to the encoder.
    losses: dict of float32 scalars, already weighted (commitment, codebook, kl, ...).
    metrics: dict of float32 scalars (usage, perplexity, ...).
  """
  tokens: jax.Array
  codes: jax.Array
  losses: dict[str, jax.Array]
  metrics: dict[str, jax.Array]


class TrainOutput(NamedTuple):
  """What `train_forward` returns: a model's whole training pass, so a train step needs nothing else.

  The training contract of every tokenizer module:
    train_forward(images, *, rng, step=None, target="pixels", perturb=None, num_tokens=None)
  images float [B, H, W, 3] in [0, 1]; rng a PRNG key; step the int32 [] training step (read by
  annealed schedules); target "pixels" or "proxy_logits" (TiTok stage 1: logits over the proxy
  codebook); perturb None or RobusTok settings {alpha, beta, delta [, anneal_start, anneal_end,
  end_ratio]} applied by the model to its own tokens (`quantizers.perturb.apply`); num_tokens a fixed
  kept prefix instead of the model's own draw. Models with a REPA projector (`repa_layer` > 0) also
  take features=True and then fill `features`. The model draws its kept length itself (tail drop /
  nested dropout, in its configured mode) on every target. A model that cannot honour a request
  (proxy logits without a proxy head, perturbation of continuous tokens) raises ValueError.

  Attributes:
    recon: [B, H, W, 3] float32, or None (target "proxy_logits", or a model whose loss is internal
      such as FlexTok's flow loss).
    losses: dict of float32 scalars, already weighted (quantizer, KL, flow). Pixel, perceptual and
      GAN losses are not included: the trainer adds them from `recon`.
    metrics: dict of float32 scalars (and arrays the trainer does not log).
    logits: [B, N, V] float32 proxy-code logits for target "proxy_logits", else None.
    features: [B, g*g, D] float32 projected intermediate decoder features on the decoder's square
      token grid (row-major) when a model that supports REPA / semantic regularisation is called
      with `features=True` (`jaxtok.losses.repa`), else None.
  """
  recon: jax.Array | None
  losses: dict[str, jax.Array]
  metrics: dict[str, jax.Array]
  logits: jax.Array | None = None
  features: jax.Array | None = None


TARGETS = ("pixels", "proxy_logits")


def check_target(target: str, *, proxy_head: bool, model: str) -> None:
  """Raises ValueError unless `target` is one of TARGETS and the model can produce it (proxy logits
  need a proxy-code head: TiTok's decoder_head "proxy_codes")."""
  if target not in TARGETS:
    raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
  if target == "proxy_logits" and not proxy_head:
    raise ValueError(f"target 'proxy_logits' (loss.proxy > 0, TiTok stage 1) needs a proxy-code head "
                     f"(decoder_head='proxy_codes'); {model} has none")


# config.name -> module under jaxtok.tokenizers (imported lazily, so a module may arrive later).
MODULES = {
    "titok": "titok",
    "onedpiece": "titok",
    "vqgan": "vqgan",
    "vae": "vae",
    "flextok": "flextok",
    "dar": "dar",
    "layton": "layton",
    "gpstoken": "gpstoken",
    "tatitok": "tatitok",
    "tokenflow": "tokenflow",
    "dualtoken": "dualtoken",
    "textok": "textok",
    "instella_bae": "instella_bae",
}


def check_images(images: Any, image_size: int | None = None, *, name: str = "images") -> None:
  """Raises TypeError/ValueError naming `name` unless images is float [B, S, S, 3] with values in [0, 1].

  The value range is checked only for concrete arrays (numpy or committed jax arrays); under a trace
  only shapes and dtypes are checked.
  """
  if not hasattr(images, "shape") or not hasattr(images, "dtype"):
    raise TypeError(f"{name} must be a jax or numpy array, got {type(images).__name__}")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise TypeError(f"{name} must have a floating dtype with values in [0, 1] (e.g. uint8 / 255.), "
                    f"got {images.dtype}")
  if images.ndim != 4:
    raise ValueError(f"{name} must have rank 4 [B, H, W, 3], got shape {tuple(images.shape)}")
  if images.shape[-1] != 3:
    raise ValueError(f"{name} must have 3 channels (channels-last [B, H, W, 3]), got shape "
                     f"{tuple(images.shape)}")
  if image_size is not None and tuple(images.shape[1:3]) != (image_size, image_size):
    raise ValueError(f"{name} must be {image_size}x{image_size} (shape [B, {image_size}, "
                     f"{image_size}, 3]), got shape {tuple(images.shape)}")
  if isinstance(images, jax.core.Tracer) or images.size == 0:
    return
  # A concrete array closed over by a traced function would otherwise be staged into the trace.
  with jax.ensure_compile_time_eval():
    lo, hi = float(jnp.min(images)), float(jnp.max(images))
  if not (lo >= 0.0 and hi <= 1.0):
    raise ValueError(f"{name} must have values in [0, 1], got min {lo} and max {hi}")


def check_num_tokens(num_tokens: Any, max_tokens: int, *, name: str = "num_tokens") -> int | None:
  """Returns num_tokens as an int (or None) or raises unless it is an int in [1, max_tokens]."""
  if num_tokens is None:
    return None
  if isinstance(num_tokens, bool) or not isinstance(num_tokens, (int, np.integer)):
    raise TypeError(f"{name} must be a Python int in [1, {max_tokens}] or None, got "
                    f"{type(num_tokens).__name__} ({num_tokens!r})")
  if not 1 <= int(num_tokens) <= max_tokens:
    raise ValueError(f"{name} must be in [1, {max_tokens}], got {num_tokens}")
  return int(num_tokens)


def vocab_size(model: Any) -> int | None:
  """Number of discrete token ids of a tokenizer module (None for continuous tokens).

  Read from the module's `bottleneck` (`tokenizers.bottleneck.Bottleneck.codebook_size`: ids per
  token entry) when it has one, else its fields: `quantizer` ("vae"), `fsq_levels` (FSQ, and
  FlexTok, which has no `quantizer` field), `codebook_size` (VQ, VQGAN).
  """
  spec = getattr(model, "bottleneck", None)
  if spec is not None and hasattr(spec, "codebook_size"):  # tokenizers.bottleneck (TiTok, VQGAN)
    return int(spec.codebook_size)
  quantizer = getattr(model, "quantizer", None)
  levels = getattr(model, "fsq_levels", None)
  if quantizer == "vae":
    return None
  if quantizer == "fsq" or (quantizer is None and levels):
    return math.prod(int(v) for v in levels)
  size = getattr(model, "codebook_size", None)
  return int(size) if size else None


def param_shapes(params: Any) -> dict[str, tuple[int, ...]]:
  """{"decoder/conv_in/kernel": shape, ...} of an nnx.State, its pure dict, or its abstract form.

  The Variable wrapper's `value` attribute is dropped from the path, so a State and the pure dict
  of the same parameters give the same keys.
  """
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = []
    for k in path:
      name = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
      if isinstance(k, jax.tree_util.GetAttrKey) and name in ("value", "raw_value"):
        continue
      names.append(str(name))
    out["/".join(names)] = tuple(getattr(leaf, "shape", ()))
  return out


def check_params(params: Any, expected: Mapping[str, tuple[int, ...]], *, name: str = "params") -> None:
  """Raises ValueError naming the first parameter path whose presence or shape differs from
  `expected` (`param_shapes` of the tokenizer's abstract parameters): parameters of another config
  would otherwise run and return wrong images, or fail deep inside the model."""
  got = param_shapes(params)
  if got == expected:
    return
  for path in sorted(set(got) | set(expected)):
    if path not in got:
      raise ValueError(f"{name} do not match this tokenizer's config: {path!r} is missing "
                       f"(expected shape {expected[path]}); were they made for another config?")
    if path not in expected:
      raise ValueError(f"{name} do not match this tokenizer's config: unexpected {path!r} "
                       f"(shape {got[path]}); were they made for another config?")
    if got[path] != expected[path]:
      raise ValueError(f"{name} do not match this tokenizer's config: {path!r} has shape "
                       f"{got[path]}, expected {expected[path]}; were they made for another config?")


def as_dict(config: Any) -> dict[str, Any]:
  """A plain dict of a ml_collections.ConfigDict or Mapping."""
  if hasattr(config, "to_dict"):
    return dict(config.to_dict())
  if isinstance(config, Mapping):
    return dict(config)
  raise TypeError(f"config must be a Mapping or ml_collections.ConfigDict, got {type(config).__name__}")


def model_module(name: str):
  """The module `jaxtok.tokenizers.<module>` serving config name `name`."""
  if name not in MODULES:
    raise ValueError(f"config.name must be one of {sorted(MODULES)}, got {name!r}")
  return importlib.import_module(f"jaxtok.tokenizers.{MODULES[name]}")


class Tokenizer:
  """A tokenizer as pure functions of its parameters.

  The public functions check their concrete arguments before compiling: images (`check_images`),
  token ids in [0, vocab_size), `num_tokens`, and that `params` have this config's paths and shapes
  (`check_params`). Inside your own jit use the jitted bodies through `model(params)` and
  `base.checkify_indices` for token ids (out-of-range ids are otherwise clipped or wrapped).

  Attributes:
    config: the plain-dict config it was built from.
    graphdef: the nnx GraphDef (static).
    image_size: input side length the model expects (None if the model does not say).
    max_tokens: K, the most tokens encode returns (None if the model does not say).
    vocab_size: number of token ids (None for continuous tokens).
    trace_counts: Counter of how many times each jitted function was traced (for tests/debugging).
  """

  def __init__(self, config: Any):
    self.config = as_dict(config)
    name = self.config.get("name")
    self._module = model_module(name)
    self._make = lambda rngs: self._module.make_model(self.config, rngs=rngs)
    abstract_model = nnx.eval_shape(lambda: self._make(nnx.Rngs(0)))
    self.graphdef, self._abstract = nnx.split(abstract_model)
    self.image_size = getattr(abstract_model, "image_size", None)
    self.max_tokens = getattr(abstract_model, "num_latent_tokens",
                              getattr(abstract_model, "num_tokens", None))
    self.vocab_size = vocab_size(abstract_model)
    self._param_shapes = param_shapes(self._abstract)
    self.trace_counts: collections.Counter = collections.Counter()
    self._jit_encode = jax.jit(self._encode, static_argnames=("num_tokens",))
    self._jit_decode = jax.jit(self._decode, static_argnames=("options",))
    self._jit_reconstruct = jax.jit(self._reconstruct, static_argnames=("num_tokens",))
    # One compiled initialiser per (mesh, rules): a fresh jax.jit per call would retrace and recompile.
    self._jit_init: dict = {}

  # ---- parameters

  def init(self, rng: jax.Array, mesh: jax.sharding.Mesh | None = None,
           rules=sharding.DEFAULT_RULES) -> nnx.State:
    """Fresh float32 parameters; with `mesh`, created sharded by their logical axes."""
    # Rules from a config are lists: a tuple form of them keys the cache.
    key = (mesh, tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules))
    if key not in self._jit_init:
      def make(r):
        self.trace_counts["init"] += 1
        return nnx.split(self._make(nnx.Rngs(r)))[1]
      out = None if mesh is None else sharding.state_shardings(self._abstract, mesh, rules)
      self._jit_init[key] = jax.jit(make, out_shardings=out)
    return self._jit_init[key](rng)

  def abstract_params(self) -> nnx.State:
    """Shapes, dtypes and logical-axis metadata of the parameters, without allocating them."""
    return self._abstract

  def shardings(self, mesh: jax.sharding.Mesh, rules=sharding.DEFAULT_RULES):
    """NamedShardings of the parameters on `mesh`."""
    return sharding.state_shardings(self._abstract, mesh, rules)

  # ---- jitted bodies

  def _encode(self, params, images, rng, num_tokens):
    self.trace_counts["encode"] += 1
    return nnx.merge(self.graphdef, params).encode(images, num_tokens=num_tokens, rng=rng)

  def _decode(self, params, tokens, rng, options):
    self.trace_counts["decode"] += 1
    return nnx.merge(self.graphdef, params).decode(tokens, rng=rng, **dict(options))

  def _reconstruct(self, params, images, rng, num_tokens):
    self.trace_counts["reconstruct"] += 1
    model = nnx.merge(self.graphdef, params)
    enc_rng, dec_rng = (None, None) if rng is None else jax.random.split(rng)
    out = model.encode(images, num_tokens=num_tokens, rng=enc_rng)
    return model.decode(out.tokens, rng=dec_rng)

  # ---- public functions

  def _check(self, params, images, num_tokens):
    check_params(params, self._param_shapes)
    check_images(images, self.image_size)
    if self.max_tokens is not None:
      return check_num_tokens(num_tokens, self.max_tokens)
    return num_tokens

  def encode(self, params: nnx.State, images: jax.Array, num_tokens: int | None = None,
             rng: jax.Array | None = None) -> EncodeOutput:
    """images float [B, H, W, 3] in [0, 1] -> EncodeOutput with K' = num_tokens (default K) tokens."""
    num_tokens = self._check(params, images, num_tokens)
    return self._jit_encode(params, images, rng, num_tokens=num_tokens)

  def decode(self, params: nnx.State, tokens: jax.Array, rng: jax.Array | None = None,
             **kw: Any) -> jax.Array:
    """tokens [B, K'] int32 (or [B, K', D] float) -> images [B, H, W, 3] float32.

    Extra keyword options go to the model's decode as static (hashable) arguments; `num_tokens`
    (decode only the first num_tokens of the K' given) must be an int in [1, K'].
    """
    check_params(params, self._param_shapes)
    if not hasattr(tokens, "shape") or tokens.ndim not in (2, 3):
      raise ValueError(f"tokens must be an array [B, K'] or [B, K', D], got "
                       f"{getattr(tokens, 'shape', type(tokens).__name__)}")
    if self.max_tokens is not None and not 1 <= tokens.shape[1] <= self.max_tokens:
      raise ValueError(f"tokens must hold between 1 and {self.max_tokens} tokens per image, got "
                       f"shape {tuple(tokens.shape)}")
    if jnp.issubdtype(tokens.dtype, jnp.integer) and self.vocab_size is not None:
      base.check_indices("tokens", tokens, self.vocab_size)
    elif jnp.issubdtype(tokens.dtype, jnp.floating):
      base.check_finite("tokens", tokens)
    if kw.get("num_tokens") is not None:
      check_num_tokens(kw["num_tokens"], tokens.shape[1])
    if "cfg_scale" in kw:  # FlexTok's guided flow decoder
      guidance.check_scale(kw["cfg_scale"])
    return self._jit_decode(params, tokens, rng, options=tuple(sorted(kw.items())))

  def reconstruct(self, params: nnx.State, images: jax.Array, num_tokens: int | None = None,
                  rng: jax.Array | None = None) -> jax.Array:
    """decode(encode(images, num_tokens)) in one compiled function: [B, H, W, 3] float32."""
    num_tokens = self._check(params, images, num_tokens)
    return self._jit_reconstruct(params, images, rng, num_tokens=num_tokens)

  def model(self, params: nnx.State) -> nnx.Module:
    """The nnx module holding `params` (for eager use, e.g. train_forward inside a custom step)."""
    return nnx.merge(self.graphdef, params)


def build(config: Any) -> Tokenizer:
  """A Tokenizer for `config` (ConfigDict or Mapping with `name` in MODULES and the model's fields).

  Common fields: `dtype` ("float32" | "bfloat16", the compute dtype; parameters stay float32 and
  quantizer math float32) and `remat` (recompute transformer blocks in the backward pass).
  """
  return Tokenizer(config)
