"""GPSToken's generator as released (xtudbxk/GPSToken `inference_generator.py`, `models/sit_models.py`
"SiT-XL/2-gs", `sample/`, `configs/gpstoken_generator.yaml`; commit 372231d): a SiT flow transformer
over the *normalised* GPS tokens, conditioned on a class and on an initial layout.

Tokens (`jaxtok.tokenizers.gpstoken`): s = (g, f), g = (sigma_x, sigma_y, rho, x, y) a Gaussian, f
its C-dim texture; D = 5 + C (21 in the release). The initial layout g0 [S, 5] is the entropy
partition's Gaussians of an image (`gps_partition`, what the encoder refines; Gaussian i of the
tokens is the refinement of g0_i). Decoupled order: the layout is chosen first (a real image's g0,
drawn from a per-class bank), then the generator makes the refinement of the geometry and the
textures given that layout:

  target    r = (g - g0, f)                    the geometry as a residual on the layout
  normalise x1 = (r - mean) / std              per channel, D statistics (`normalise`)
  sample    r = x1 std + mean, g = r_g + g0; clamp sigma to [1e-5, 1 - 1e-5], rho to (-1, 1) as
            the release's postprocess (`denormalise`)

The release's statistics are constants of its config (`RELEASED_MEAN`, `RELEASED_STD`, M128 with
C = 16); for any other tokenizer they are computed from the data by tools/pretokenize.py
(`token_stats`, stored in the token dataset's meta.json as "gpstoken_stats") and `stats="data"`
(the default) uses those; `stats="released"` the constants.

Network (SiT with patch size 1 over the S tokens): x_embedder Linear(D -> W) per token; the layout
enters as cond_embedder = Linear(5 -> W), SiLU, Linear(W -> W) added to every token *instead of* a
position embedding (the release drops pos_embed whenever cond is given, and always gives it); time
t in [0, 1] through the TimestepEmbedder (256 sinusoidal features of t itself, Linear, SiLU,
Linear); class through a table with a null row (class dropout 0.1); c = t_emb + y_emb modulates
every block (the shared `nn.Block` with AdaLN-zero: LayerNorm without affine, eps 1e-6, qkv bias,
GELU-tanh MLP 4 W) and the final layer (LayerNorm without affine, (shift, scale) from silu(c),
Linear(W -> 2 D) of which the first D channels are the velocity: learn_sigma=True as released, the
rest unused). Initialisation as SiT's: xavier-uniform linears, zero biases, N(0, 0.02) class table
and time MLP, zero adaLN and output layers.

Loss (SiT `Transport.training_losses`, Linear path, velocity prediction, no weighting): t ~ U[0, 1),
x0 ~ N(0, I), x_t = t x1 + (1 - t) x0, loss = mean (v(x_t, t, y, g0) - (x1 - x0))^2.

Sampling (`sample`): the release's default SDE (`samplers.sit_sde`: Euler-Maruyama, 250 steps) or
`method="ode"` (Heun on `samplers.flow`; the release uses torchdiffeq's adaptive dopri5 there).
Guidance as `forward_with_cfg`: u + s (c - u) on the velocity only while guidance_low <= t <=
guidance_high (scripts/generate.sh: s = 1.5, low 0.2, high 1.0), the conditional velocity
elsewhere; both branches see the same layout. A call without a layout is refused: the released
generator is never run without one (its pos_embed fallback is untrained).

The layout bank (`LayoutBank`): the release's initg.pickle maps each class to a list of initial
layouts and pops one per sample (`ginit_data[y].pop()`). Ours is the token dataset's layouts.npy
(each example's g0, written by tools/pretokenize.py on a GPSToken run) grouped by labels.npy, popped
from the end of each class's list in dataset order; where the release would fail on an exhausted
class, the class's list starts over.

Dimension names: B batch, S tokens (Gaussians), D token dimension, W width.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok.generators.trunk import check_generator_args, class_condition
from jaxtok.nn.block import Block
from jaxtok.nn.dense import Dense
from jaxtok.nn.embeddings import timestep_embedding, xavier_uniform_fused
from jaxtok.nn.norm import Norm
from jaxtok.nn.options import model_kwargs
from jaxtok.nn.stack import Stack
from jaxtok.samplers import flow, guidance, sit_sde
from jaxtok.sharding import logical_init
from jaxtok.tokenizers.gpstoken import GEOMETRY

# configs/gpstoken_generator.yaml: pretrained_gpstoken_means / _stds (M128: 5 geometry + 16 texture)
RELEASED_MEAN = (-0.0211, -0.0196, 0.0107, -0.0052, -0.0044, 1.8017, 2.4036, 2.0145, 1.2402,
                 -4.2579, -1.2646, -3.0395, 2.2928, 3.2168, -0.1431, 0.1600, 1.3924, 3.2345,
                 1.6994, 0.8237, 0.3222)
RELEASED_STD = (0.0121, 0.0108, 0.2533, 0.0119, 0.0114, 2.7334, 2.6400, 2.7963, 2.9325, 2.8337,
                2.8269, 3.1082, 3.1412, 2.8038, 2.6501, 2.6163, 2.4718, 2.6958, 2.8157, 2.4744,
                2.8200)
STATS_KEY = "gpstoken_stats"  # meta.json entry written by tools/pretokenize.py
LAYOUTS = "layouts"  # layouts.npy of a token dataset: float32 [N, S, 5]
_CLAMP = 1e-5  # the release's postprocess margin
_FREQ = 256  # SiT's TimestepEmbedder frequency width
# scripts/generate.sh (the release's sampling run): SDE, 250 steps, cfg 1.5 on t in [0.2, 1].
SAMPLING = dict(steps=250, cfg_scale=1.5, guidance_low=0.2, guidance_high=1.0)


# ----------------------------------------------------------------------------- token normalisation


def _check_layout(tokens, layout):
  if layout is None:
    raise ValueError("GPSToken's generator needs the initial layout (layout float [B, S, 5], the "
                     "partition's Gaussians); the release never runs it without one, got None")
  if layout.shape != tokens.shape[:-1] + (GEOMETRY,):
    raise ValueError(f"layout must be {tuple(tokens.shape[:-1]) + (GEOMETRY,)} to match tokens "
                     f"{tuple(tokens.shape)}, got {tuple(layout.shape)}")


def residual(tokens: jax.Array, layout: jax.Array) -> jax.Array:
  """(g - g0, f) float32 [..., S, D] of tokens [..., S, D] and layouts g0 [..., S, 5]."""
  _check_layout(tokens, layout)
  t = jnp.asarray(tokens, jnp.float32)
  return jnp.concatenate([t[..., :GEOMETRY] - layout, t[..., GEOMETRY:]], axis=-1)


def normalise(tokens: jax.Array, layout: jax.Array, mean, std) -> jax.Array:
  """The generator's data x1 float32 [..., S, D] = (residual - mean) / std; mean, std [D] or
  [B, D] (per-row statistics, broadcast over S)."""
  mean, std = _stats_like(mean, tokens), _stats_like(std, tokens)
  return (residual(tokens, layout) - mean) / std


def denormalise(x: jax.Array, layout: jax.Array, mean, std) -> jax.Array:
  """Tokens float32 [..., S, D] of generator samples x [..., S, D]: the inverse of `normalise`, then
  the release's clamps (sigma_x, sigma_y to [1e-5, 1 - 1e-5], rho to [-1 + 1e-5, 1 - 1e-5])."""
  _check_layout(x, layout)
  r = jnp.asarray(x, jnp.float32) * _stats_like(std, x) + _stats_like(mean, x)
  g = r[..., :GEOMETRY] + layout
  g = jnp.concatenate([jnp.clip(g[..., :2], _CLAMP, 1.0 - _CLAMP),
                       jnp.clip(g[..., 2:3], -1.0 + _CLAMP, 1.0 - _CLAMP), g[..., 3:]], axis=-1)
  return jnp.concatenate([g, r[..., GEOMETRY:]], axis=-1)


def _stats_like(s, tokens):
  s = jnp.asarray(s, jnp.float32)
  if s.shape[-1] != tokens.shape[-1] or s.ndim > 2:
    raise ValueError(f"statistics must be [D] or [B, D] with D = {tokens.shape[-1]}, got "
                     f"{tuple(s.shape)}")
  return s[:, None] if s.ndim == 2 else s


def token_stats(tokens: np.ndarray, layouts: np.ndarray) -> dict[str, list[float]]:
  """{"mean": [D], "std": [D]} of the residual tokens (g - g0, f) over all examples and tokens
  (float64, population std floored at 1e-6 so a constant channel normalises to 0, not NaN)."""
  r = np.asarray(residual(jnp.asarray(tokens), jnp.asarray(layouts)), np.float64)
  r = r.reshape(-1, r.shape[-1])
  return {"mean": r.mean(0).tolist(), "std": np.maximum(r.std(0), 1e-6).tolist()}


def initial_layouts(model, images: np.ndarray) -> np.ndarray:
  """float32 [N, S, 5]: the initial Gaussians of images [N, H, W, 3] in [0, 1] under a GPSToken
  tokenizer module (its own partition: the g0 its encoder refined)."""
  return np.asarray(model.initial_gaussians(jnp.asarray(images, jnp.float32))[1], np.float32)


def released_or_data_stats(stats: str, meta: Mapping[str, Any], token_dim: int, where: str):
  """(mean [D], std [D]) float32 for `stats` "released" (the config's constants) or "data" (the
  token dataset's meta.json entry); ValueError naming what is missing or mismatched."""
  if stats == "released":
    mean, std = np.asarray(RELEASED_MEAN, np.float32), np.asarray(RELEASED_STD, np.float32)
  elif stats == "data":
    entry = meta.get(STATS_KEY)
    if entry is None:
      raise ValueError(f"{where} holds no '{STATS_KEY}' (write it with tools/pretokenize.py on a "
                       f"GPSToken run) and config.model.stats is 'data'")
    mean, std = np.asarray(entry["mean"], np.float32), np.asarray(entry["std"], np.float32)
  else:
    raise ValueError(f"config.model.stats must be 'data' or 'released', got {stats!r}")
  if mean.shape != (token_dim,):
    raise ValueError(f"the {stats} statistics have {mean.shape[0]} channels, config.model.token_dim "
                     f"is {token_dim}")
  return mean, std


# ----------------------------------------------------------------------------- the model


def _xavier():
  return nnx.initializers.xavier_uniform()


class GPSTokenGenerator(nnx.Module):
  """SiT-gs over GPS tokens (module docstring). `velocity` is the network; `loss` trains it.

  Args:
    token_dim: D = 5 + C (released 21). seq_len: S (released 128).
    num_classes: classes (0: unconditional, only the null row). class_dropout: released 0.1.
    width, depth, heads, mlp_ratio: SiT-XL: 1152, 28, 16, 4 (SiT-S: 384, 12, 6, 4).
    learn_sigma: the release's output of 2 D channels (the second half unused).
    stats: "data" or "released": where the normalisation statistics come from (read by the data
      and sampling paths, not by the network).
  """

  def __init__(self, *, token_dim: int = 21, seq_len: int = 128, num_classes: int = 1000,
               width: int = 1152, depth: int = 28, heads: int = 16, mlp_ratio: float = 4.0,
               class_dropout: float = 0.1, learn_sigma: bool = True, stats: str = "data",
               dtype=jnp.float32, remat="none", scan_layers: bool = False, attention_impl=None,
               rngs: nnx.Rngs):
    check_generator_args(num_classes=num_classes, class_dropout=class_dropout, seq_len=seq_len,
                         depth=depth)
    if token_dim <= GEOMETRY:
      raise ValueError(f"token_dim must be > {GEOMETRY} (5 geometry + texture channels), got "
                       f"{token_dim}")
    if stats not in ("data", "released"):
      raise ValueError(f"stats must be 'data' or 'released', got {stats!r}")
    self.token_dim, self.seq_len, self.num_classes = token_dim, seq_len, num_classes
    self.class_dropout, self.stats, self.dtype = class_dropout, stats, dtype
    out = 2 * token_dim if learn_sigma else token_dim
    lin = lambda i, o, names, init=None: Dense(i, o, names, kernel_init=init or _xavier(),
                                               dtype=dtype, rngs=rngs)
    n02 = nnx.initializers.normal(0.02)
    self.x_embed = lin(token_dim, width, (None, "embed"))
    self.cond_fc1 = lin(GEOMETRY, width, (None, "embed"))
    self.cond_fc2 = lin(width, width, ("mlp", "embed"))
    self.time_fc1 = lin(_FREQ, width, (None, "embed"), n02)
    self.time_fc2 = lin(width, width, ("mlp", "embed"), n02)
    self.class_embed = nnx.Embed(num_classes + 1, width,
                                 embedding_init=logical_init(n02, "vocab", "embed"), rngs=rngs)
    self.blocks = Stack(depth, lambda r: Block(
        width, heads, mlp_hidden=int(width * mlp_ratio), mlp="gelu_tanh", norm="layer",
        norm_eps=1e-6, norm_affine=False, adaln=True, qkv_bias=True,
        qkv_init=xavier_uniform_fused(width, 3), out_init=xavier_uniform_fused(width, 1),
        mlp_init=_xavier(), implementation=attention_impl, dtype=dtype, rngs=r),
        scan_layers=scan_layers, remat=remat, rngs=rngs)
    self.final_norm = Norm(width, eps=1e-6, affine=False, dtype=dtype, rngs=rngs)
    self.final_ada = lin(width, 2 * width, ("embed", "mlp"), nnx.initializers.zeros)
    self.final_out = lin(width, out, ("embed", None), nnx.initializers.zeros)

  @property
  def null_id(self) -> int:
    return self.num_classes

  def velocity(self, x: jax.Array, t: jax.Array, labels, layout: jax.Array, *, train: bool = False,
               rng: jax.Array | None = None) -> jax.Array:
    """Velocity float32 [B, S, D] at x [B, S, D] (normalised tokens on the path), times t [B] in
    [0, 1] (0 noise), labels int32 [B] (-1 null) or None, layout g0 float [B, S, 5]. train with a
    key: class dropout."""
    b, s, d = x.shape
    if (s, d) != (self.seq_len, self.token_dim):
      raise ValueError(f"x must be [B, {self.seq_len}, {self.token_dim}], got {tuple(x.shape)}")
    _check_layout(x, layout)
    cls = class_condition(labels, b, null_id=self.null_id, num_classes=self.num_classes,
                          class_dropout=self.class_dropout, train=train, rng=rng)
    g = jnp.asarray(layout, jnp.float32).astype(self.dtype)
    h = self.x_embed(x.astype(self.dtype)) + self.cond_fc2(jax.nn.silu(self.cond_fc1(g)))
    temb = timestep_embedding(jnp.broadcast_to(t, (b,)), _FREQ, scale=1.0)  # SiT embeds t itself
    c = self.time_fc2(jax.nn.silu(self.time_fc1(temb.astype(self.dtype)))) + \
        self.class_embed(cls).astype(self.dtype)
    h = self.blocks(h, cond=c)
    shift, scale = jnp.split(self.final_ada(jax.nn.silu(c)), 2, axis=-1)
    h = self.final_norm(h) * (1 + scale[:, None]) + shift[:, None]
    return self.final_out(h).astype(jnp.float32)[..., :self.token_dim]


def _labels_dict(labels) -> dict:
  if not isinstance(labels, Mapping) or not {"layout", "mean", "std"} <= set(labels):
    got = sorted(labels) if isinstance(labels, Mapping) else type(labels).__name__
    raise ValueError(f"GPSToken's generator takes labels {{'label', 'layout', 'mean', 'std'}} (the "
                     f"initial layouts and statistics of a token dataset, `batch_labels`), got {got}")
  return labels


def loss(model: GPSTokenGenerator, tokens: jax.Array, labels, *, rng: jax.Array,
         train: bool = True, step=None):
  """SiT's velocity loss on the normalised residual tokens, and metrics {loss, mean_t}.

  tokens float [B, S, D] (the tokenizer's); labels {"label": int32 [B] (-1 null), "layout": float
  [B, S, 5], "mean", "std": float [B, D]} (`batch_labels`). `step` is unused (contract).
  """
  del step
  lab = _labels_dict(labels)
  b, s, d = tokens.shape
  if (s, d) != (model.seq_len, model.token_dim):
    raise ValueError(f"tokens must be [B, {model.seq_len}, {model.token_dim}], got "
                     f"{tuple(tokens.shape)}")
  x1 = normalise(tokens, jnp.asarray(lab["layout"], jnp.float32), lab["mean"], lab["std"])
  r_t, r_x, r_drop = jax.random.split(rng, 3)
  t = jax.random.uniform(r_t, (b,), jnp.float32)
  x0 = jax.random.normal(r_x, x1.shape, jnp.float32)
  xt = t[:, None, None] * x1 + (1.0 - t[:, None, None]) * x0
  v = model.velocity(xt, t, lab.get("label"), lab["layout"], train=train, rng=r_drop)
  value = jnp.mean((v - (x1 - x0)) ** 2)
  return value, {"loss": value, "mean_t": jnp.mean(t)}


FIELDS = ("token_dim", "seq_len", "num_classes", "width", "depth", "heads", "mlp_ratio",
          "class_dropout", "learn_sigma", "stats")


def make_model(cfg: Mapping, *, rngs: nnx.Rngs) -> GPSTokenGenerator:
  """A GPSTokenGenerator from its constructor's fields plus `nn.options.COMMON` and `name`; any
  other key raises ValueError."""
  return GPSTokenGenerator(**model_kwargs(cfg, FIELDS, model="gpstoken_gen",
                                          cls=GPSTokenGenerator), rngs=rngs)


# ----------------------------------------------------------------------------- sampling


def guided_velocity(model: GPSTokenGenerator, labels, layout, *, cfg_scale: float = 1.0,
                    guidance_low: float = 0.0, guidance_high: float = 1.0):
  """`fn(x [B, S, D], t scalar) -> v`: the release's `forward_with_cfg` with the velocity only
  (u + s (c - u) while guidance_low <= t <= guidance_high, else the conditional velocity); no
  guidance pass at all when cfg_scale is 1 or the model is unconditional."""
  guidance.check_scale(cfg_scale)
  b = layout.shape[0]
  labels = jnp.full((b,), -1, jnp.int32) if labels is None else jnp.asarray(labels, jnp.int32)

  def cond_only(x, t):
    return model.velocity(x, jnp.full((b,), t), labels, layout)

  if model.num_classes == 0 or float(cfg_scale) == 1.0:
    return cond_only

  def fn(x, t):
    c, u = guidance.call_pair(lambda x2, y2: model.velocity(x2, jnp.full((2 * b,), t), y2[0], y2[1]),
                              (x,), (labels, layout), (jnp.full_like(labels, -1), layout))
    inside = (t >= guidance_low) & (t <= guidance_high)
    return guidance.cfg_uncond_base(c, u, jnp.where(inside, cfg_scale, 1.0))

  return fn


def sample(model: GPSTokenGenerator, rng: jax.Array, labels, layout: jax.Array, mean, std, *,
           steps: int = 250, cfg_scale: float = 1.0, guidance_low: float = 0.0,
           guidance_high: float = 1.0, method: str = "sde") -> jax.Array:
  """Tokens float32 [B, S, D] for labels int32 [B] (-1 null) and layouts float [B, S, 5]: noise ->
  `sit_sde.sample` (method "sde", the release's default) or Heun over `flow.sample` ("ode") ->
  `denormalise` with mean, std [D] or [B, D]."""
  if method not in ("sde", "ode"):
    raise ValueError(f"method must be 'sde' or 'ode', got {method!r}")
  if layout is None:
    _check_layout(jnp.zeros((1, model.seq_len, model.token_dim)), None)
  layout = jnp.asarray(layout, jnp.float32)
  b = layout.shape[0]
  r_x, r_sde = jax.random.split(rng)
  x0 = jax.random.normal(r_x, (b, model.seq_len, model.token_dim), jnp.float32)
  fn = guided_velocity(model, labels, layout, cfg_scale=cfg_scale, guidance_low=guidance_low,
                       guidance_high=guidance_high)
  if method == "sde":
    x = sit_sde.sample(fn, x0, r_sde, steps=steps)
  else:
    x = flow.sample(lambda x, t, _: fn(x, t), x0, steps=steps, method="heun")
  return denormalise(x, layout, mean, std)


def generate(model: GPSTokenGenerator, rng: jax.Array, labels: Mapping, opts) -> jax.Array:
  """`eval.generate` entry: labels {"label", "layout", "mean", "std"} (`LayoutBank.labels`), opts'
  steps (default 250) and cfg_scale (the configs set the release's 1.5), guidance on t in [0.2, 1]
  (`SAMPLING`, scripts/generate.sh)."""
  lab = _labels_dict(labels)
  return sample(model, rng, lab.get("label"), lab["layout"], lab["mean"], lab["std"],
                steps=opts.steps or SAMPLING["steps"], cfg_scale=opts.cfg_scale,
                guidance_low=SAMPLING["guidance_low"], guidance_high=SAMPLING["guidance_high"])


# ----------------------------------------------------------------------------- data and the bank


def read_layouts(path: str) -> np.ndarray:
  """The token dataset's layouts.npy float32 [N, S, 5] (memory-mapped); ValueError when absent."""
  where = os.path.join(path, f"{LAYOUTS}.npy")
  if not os.path.exists(where):
    raise ValueError(f"GPSToken's generator trains and samples on initial layouts: {path!r} has no "
                     f"{LAYOUTS}.npy (run tools/pretokenize.py on a GPSToken tokenizer's run; a "
                     f"converted release: tools/convert.py --initg)")
  return np.load(where, mmap_mode="r")


def batch_labels(gcfg: Mapping, path: str):
  """Host fn batch {"tokens", "label", "layout"} -> {"tokens", "label": {"label", "layout", "mean",
  "std"}} for training on the token dataset at `path` (statistics per config.model.stats)."""
  from jaxtok.data import tokens as token_data  # pylint: disable=g-import-not-at-top
  read_layouts(path)
  mean, std = released_or_data_stats(gcfg.get("stats", "data"), token_data.read_meta(path),
                                     int(gcfg.get("token_dim", 21)), f"--data {path!r}")

  def fn(batch):
    n = len(batch["label"])
    return {"tokens": batch["tokens"],
            "label": {"label": np.asarray(batch["label"], np.int32),
                      "layout": np.asarray(batch["layout"], np.float32),
                      "mean": np.repeat(mean[None], n, 0), "std": np.repeat(std[None], n, 0)}}

  return fn


class LayoutBank:
  """Per-class lists of initial layouts (the release's initg.pickle) from a token dataset; `labels`
  pops one per sample, as the release's `ginit_data[y].pop()`."""

  def __init__(self, layouts: np.ndarray, labels: np.ndarray, mean, std, num_classes: int):
    layouts, labels = np.asarray(layouts, np.float32), np.asarray(labels)
    if layouts.ndim != 3 or layouts.shape[-1] != GEOMETRY or labels.shape != layouts.shape[:1]:
      raise ValueError(f"need layouts [N, S, {GEOMETRY}] and labels [N], got {layouts.shape} and "
                       f"{labels.shape}")
    self.layouts, self.mean, self.std = layouts, np.asarray(mean, np.float32), np.asarray(std, np.float32)
    keys = labels if num_classes > 0 else np.full_like(labels, -1)
    self._rows = {int(k): np.flatnonzero(keys == k) for k in np.unique(keys)}
    self._rows[-1] = np.arange(len(labels))  # unconditional samples draw from the whole bank
    self._left = {k: list(v) for k, v in self._rows.items()}

  @classmethod
  def from_meta(cls, gcfg: Mapping, meta: Mapping) -> "LayoutBank":
    """The bank of the token dataset a run trained on (`meta`: its data_meta.json, with "path")."""
    path = meta.get("path")
    if not path:
      raise ValueError("GPSToken's generator samples layouts from its training data's bank: the run's "
                       "data_meta.json names no dataset path (train with tools/train_generator.py)")
    mean, std = released_or_data_stats(gcfg.get("stats", "data"), meta,
                                       int(gcfg.get("token_dim", 21)), f"data_meta.json of {path!r}")
    return cls(read_layouts(path), np.load(os.path.join(path, "labels.npy")), mean, std,
               int(gcfg.get("num_classes", 0)))

  def pop(self, label: int) -> np.ndarray:
    """One layout [S, 5] of class `label` (-1: any), the last one not yet used."""
    key = int(label) if int(label) in self._rows else None
    if key is None:
      raise ValueError(f"the layout bank has no example of class {label} (classes "
                       f"{sorted(k for k in self._rows if k >= 0)})")
    if not self._left[key]:  # the release would fail here; start the class over
      self._left[key] = list(self._rows[key])
    return self.layouts[self._left[key].pop()]

  def labels(self, labels: np.ndarray) -> dict[str, np.ndarray]:
    """The sampler's labels {"label", "layout", "mean", "std"} for class ids int32 [B]."""
    labels = np.asarray(labels, np.int32)
    n = len(labels)
    return {"label": labels, "layout": np.stack([self.pop(y) for y in labels]),
            "mean": np.repeat(self.mean[None], n, 0), "std": np.repeat(self.std[None], n, 0)}


def dataset_extras(tokenizer_module, images: np.ndarray, tokens: np.ndarray,
                   batch_size: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """tools/pretokenize.py on a GPSToken run: ({"layouts": [N, S, 5]}, {STATS_KEY: token_stats}),
  the per-example initial layouts in batches of `batch_size` and the residual statistics."""
  from jaxtok.eval import cli  # pylint: disable=g-import-not-at-top
  layouts = cli.batched(lambda x: initial_layouts(tokenizer_module, x), images, batch_size)
  return {LAYOUTS: layouts}, {STATS_KEY: token_stats(tokens, layouts)}

