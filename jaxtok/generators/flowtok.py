"""FlowTok (He, Yu, Liu, Chen 2025, "FlowTok: Flowing Seamlessly Across Text and Image Tokens",
arXiv 2503.10772): flow matching directly between a caption's projected text tokens and the image's
compact 1D continuous tokens (TA-TiTok's VAE variant), with no noise source.

  text:      CLIP per-token features T [B, T, C] (frozen, precomputed) -> text projector (Dense to
             Wp, a `Stack` of pre-norm `Block`s, Norm, Dense to 2D) -> mean, logvar [B, K, D];
             Z_T = mean + exp(logvar / 2) eps (reparameterised; sampling draws it too, so a
             caption gives diverse images). T must equal K (the paper: K = N = 77, D = 16).
  flow:      x_t = (1 - t) x0 + t x1, target v = x1 - x0, t ~ logit-normal (sigmoid of N(0, 1));
             direction "t2i": x0 = Z_T, x1 = image tokens Z_I; "i2t": x0 = Z_I, x1 = Z_T (a second
             model trained the other way; see also `transport(reverse=True)` below).
  velocity:  DiT-style: Dense(D -> W) + fixed 1D sin-cos positions, a `Stack` of AdaLN-zero `Block`s
             (LayerNorm without affine, eps 1e-6, tanh-GELU MLP) modulated by
             c = TimestepEmbedder(t) + indicator embedding (0: conditional, 1: null), then the DiT
             final layer (adaLN-modulated LayerNorm, zero-initialised Dense(W -> D)).
  losses:    L = L_fm + kl_weight * L_kld + align_weight * L_align, with
             L_fm    mean squared velocity error;
             L_kld   KL(N(mean, exp(logvar)) || N(0, I)) summed over K x D, averaged over the batch
                     (`tokenizers.vae.kl_divergence`);
             L_align the text alignment loss: Z_T flattened, an MLP to the CLIP pooled width P, and
                     the symmetric InfoNCE of (T_P = CLIP pooled feature, that projection), both
                     L2-normalised, logits exp(tau) T_P Z^T with a learned temperature tau
                     (`clip_contrastive_loss`).
  guidance:  CrossFlow's CFG indicator (FlowTok's code builds on CrossFlow; the source is the text
             itself, so there is no null caption to feed): in training, with probability cfg_prob
             a sample gets indicator 1 and a mismatched target (the next sample's in the batch,
             rolled by one); sampling combines v = u + s (c - u) (`samplers.flow`, "cfg").

What follows which source (the official FlowTok code was not readable here; its README says it
builds on TA-TiTok, CrossFlow and DiT):
  paper:     the direct text <-> image flow, the shared [K, D] shape, the KL-regularised text
             projector, the CLIP-style text alignment loss to the pooled feature and
             L = L_fm + g1 L_kld + g2 L_align; image-to-text "under the same formulation".
  CrossFlow (qihao067/CrossFlow, diffusion/flow_matching.py, libs/model/dit_t2i.py): the CFG
             indicator and its target shuffle, the logit-normal t, the end-to-end gradient from
             L_fm into the projector (Z_T is not detached), sampling Z_T from N(mean, var) at
             inference, the DiT blocks / TimestepEmbedder on t in [0, 1] (no x1000) / zero-init
             final layer, the loss weights (KL 1e-2, alignment 1).
  ours:      the projector's exact layout (CrossFlow's text encoder also downsamples the width; the
             paper's is a projector to [K, D], here blocks + a per-token Dense), the alignment
             MLP's placement (on flattened Z_T), the standard KL (CrossFlow uses a variant with
             (0.3 mu)^6 in place of mu^2), sigma_min = 0 (CrossFlow: 1e-5), the next-row target
             shuffle (CrossFlow rolls among the null rows only), plain Euler/Heun on the grid
             i / steps (`samplers.flow`; CrossFlow evaluates at linspace(0, 1 - 1e-5, steps)).

Labels (the generator-training contract's `labels`): MaskGen's text-condition dict
  {"text": [B, T, C] float, "pooled": [B, P] float[, "null_text", "null_pooled"]} (the null entries
  are accepted and unused: guidance is the indicator; `generators.maskgen.text_condition` makes
  the dict from `text.encoder.TextEncoder` outputs, "text" being the penultimate CLIP features as
  for MaskGen, where CrossFlow's projector read the last layer's). Tokens: image tokens float
  [B, K, D].

Dimension names: B batch, K tokens (= T text length), D token dimension, C CLIP token width, P CLIP
pooled width, W velocity width, Wp projector width, H align MLP hidden width, L depth.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok.generators.xar import logit_normal
from jaxtok.nn.block import Block
from jaxtok.nn.dense import Dense
from jaxtok.nn.embeddings import sincos_1d, timestep_embedding
from jaxtok.nn.norm import Norm
from jaxtok.nn.options import model_kwargs
from jaxtok.nn.stack import Stack
from jaxtok.samplers import _checks, flow
from jaxtok.sharding import logical_init
from jaxtok.tokenizers import vae

FIELDS = ("token_dim", "seq_len", "text_dim", "pooled_dim", "direction", "width", "depth", "heads",
          "mlp_ratio", "projector_width", "projector_depth", "projector_heads", "align_hidden",
          "cfg_prob", "kl_weight", "align_weight")
DIRECTIONS = ("t2i", "i2t")
_FREQ = 256  # DiT's TimestepEmbedder frequency width
_INIT = nnx.initializers.xavier_uniform()  # DiT's _basic_init for Linear layers
_LOGIT_SCALE_INIT = math.log(1 / 0.07)  # CLIP's temperature init
_LOGIT_SCALE_MAX = math.log(100.0)  # CLIP clamps exp(tau) to 100


# ---- pure functions -------------------------------------------------------------------------

def interpolate(x0: jax.Array, x1: jax.Array, t: jax.Array) -> jax.Array:
  """The linear path x_t = (1 - t) x0 + t x1, float32 [B, ...], for t [B]."""
  t = jnp.asarray(t, jnp.float32).reshape((-1,) + (1,) * (x0.ndim - 1))
  return (1 - t) * x0.astype(jnp.float32) + t * x1.astype(jnp.float32)


def clip_contrastive_loss(a: jax.Array, b: jax.Array, log_scale: jax.Array) -> jax.Array:
  """Symmetric InfoNCE float32 scalar of paired rows a [B, E], b [B, E] (row i of a matches row i
  of b): both L2-normalised, logits = exp(log_scale) a b^T, (CE(logits, arange) + CE(logits^T,
  arange)) / 2 (CLIP's loss; FlowTok's text alignment loss with a = T_P, b = projected Z_T)."""
  if a.ndim != 2 or a.shape != b.shape:
    raise ValueError(f"a and b must be paired features [B, E] of one shape, got {tuple(a.shape)} "
                     f"and {tuple(b.shape)}")
  norm = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)
  a, b = norm(a.astype(jnp.float32)), norm(b.astype(jnp.float32))
  logits = jnp.exp(jnp.asarray(log_scale, jnp.float32)) * (a @ b.T)
  diag = jnp.diagonal(jax.nn.log_softmax(logits, -1)), jnp.diagonal(jax.nn.log_softmax(logits.T, -1))
  return -(diag[0].mean() + diag[1].mean()) / 2


def shuffle_null_targets(x1: jax.Array, null: jax.Array) -> jax.Array:
  """x1 [B, ...] with the rows where null [B] is true replaced by the next row's (rolled by one):
  a mismatched target, so the indicator-1 velocity learns the flow away from the pairing (CrossFlow's
  CFG training). With B = 1 the roll is the identity."""
  mask = jnp.asarray(null, bool).reshape((-1,) + (1,) * (x1.ndim - 1))
  return jnp.where(mask, jnp.roll(x1, -1, axis=0), x1)


# ---- the model ------------------------------------------------------------------------------

class TextProjector(nnx.Module):
  """CLIP per-token features [B, K, C] -> (mean, logvar) float32 [B, K, D] (logvar clamped as
  `tokenizers.vae`): Dense(C -> Wp), `depth` bidirectional pre-norm Blocks, Norm, Dense(Wp -> 2D)."""

  def __init__(self, *, text_dim: int, token_dim: int, width: int, depth: int, heads: int,
               dtype=jnp.float32, remat="none", scan_layers: bool = False, attention_impl=None,
               rngs: nnx.Rngs):
    self.dtype = dtype
    self.inp = Dense(text_dim, width, (None, "embed"), dtype=dtype, kernel_init=_INIT, rngs=rngs)
    self.blocks = Stack(depth, lambda r: Block(
        width, heads, mlp_hidden=4 * width, mlp="gelu", norm_eps=1e-6, implementation=attention_impl,
        qkv_init=_INIT, out_init=_INIT, mlp_init=_INIT, dtype=dtype, rngs=r),
        scan_layers=scan_layers, remat=remat, rngs=rngs)
    self.norm = Norm(width, eps=1e-6, dtype=dtype, rngs=rngs)
    self.out = Dense(width, 2 * token_dim, ("embed", None), dtype=dtype, kernel_init=_INIT, rngs=rngs)

  def __call__(self, text: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = self.blocks(self.inp(text.astype(jnp.float32)))
    return vae.split_moments(self.out(self.norm(h)))


class FlowTok(nnx.Module):
  """Text projector + alignment MLP + DiT velocity network (module docstring).

  Args:
    token_dim, seq_len: D and K of the image tokens (the projected text tokens share them).
    text_dim, pooled_dim: C and P of the CLIP features.
    direction: "t2i" (x0 = text tokens, x1 = image tokens) or "i2t" (the reverse pairing).
    width, depth, heads, mlp_ratio: the velocity transformer (W, L, heads, MLP hidden / W).
    projector_width, projector_depth, projector_heads: the text projector (Wp, its depth, heads).
    align_hidden: H, the alignment MLP's hidden width.
    cfg_prob: the CFG indicator's training probability; kl_weight, align_weight: g1, g2.
    dtype, remat, scan_layers, attention_impl: `nn.options`.
  """

  def __init__(self, *, token_dim: int, seq_len: int, text_dim: int = 768, pooled_dim: int = 768,
               direction: str = "t2i", width: int = 768, depth: int = 12, heads: int = 12,
               mlp_ratio: float = 4.0, projector_width: int = 768, projector_depth: int = 3,
               projector_heads: int = 12, align_hidden: int = 1024, cfg_prob: float = 0.1,
               kl_weight: float = 1e-2, align_weight: float = 1.0, dtype: Any = jnp.float32,
               remat: Any = "none", scan_layers: bool = False, attention_impl: Any = None,
               rngs: nnx.Rngs):
    for name, v in (("token_dim", token_dim), ("seq_len", seq_len), ("text_dim", text_dim),
                    ("pooled_dim", pooled_dim), ("width", width), ("depth", depth),
                    ("heads", heads), ("projector_width", projector_width),
                    ("projector_depth", projector_depth), ("projector_heads", projector_heads),
                    ("align_hidden", align_hidden)):
      _checks.positive_int(f"FlowTok {name}", v)
    if width % 2:
      raise ValueError(f"FlowTok width must be even (sin-cos positions), got {width}")
    if direction not in DIRECTIONS:
      raise ValueError(f"FlowTok direction must be one of {DIRECTIONS}, got {direction!r}")
    if not 0.0 <= cfg_prob < 1.0:
      raise ValueError(f"FlowTok cfg_prob must be in [0, 1), got {cfg_prob}")
    if kl_weight < 0 or align_weight < 0:
      raise ValueError(f"FlowTok kl_weight and align_weight must be >= 0, got {kl_weight} and "
                       f"{align_weight}")
    self.token_dim, self.seq_len, self.text_dim, self.pooled_dim = token_dim, seq_len, text_dim, pooled_dim
    self.direction, self.width, self.dtype = direction, width, dtype
    self.cfg_prob, self.kl_weight, self.align_weight = float(cfg_prob), float(kl_weight), float(align_weight)
    opts = dict(dtype=dtype, remat=remat, scan_layers=scan_layers, attention_impl=attention_impl)
    self.projector = TextProjector(text_dim=text_dim, token_dim=token_dim, width=projector_width,
                                   depth=projector_depth, heads=projector_heads, rngs=rngs, **opts)
    self.align_fc1 = Dense(seq_len * token_dim, align_hidden, (None, "mlp"), kernel_init=_INIT,
                           rngs=rngs)
    self.align_fc2 = Dense(align_hidden, pooled_dim, ("mlp", None), kernel_init=_INIT, rngs=rngs)
    self.logit_scale = nnx.Param(logical_init(nnx.initializers.constant(_LOGIT_SCALE_INIT))(
        rngs.params(), (), jnp.float32))
    # Velocity network (DiT): token embedding, TimestepEmbedder, indicator table, blocks, final layer.
    self.token_in = Dense(token_dim, width, (None, "embed"), dtype=dtype, kernel_init=_INIT, rngs=rngs)
    normal = nnx.initializers.normal(0.02)
    self.time_in = Dense(_FREQ, width, (None, "embed"), kernel_init=normal, rngs=rngs)
    self.time_out = Dense(width, width, ("embed", "mlp"), kernel_init=normal, rngs=rngs)
    self.indicator = nnx.Param(logical_init(normal, None, "embed")(rngs.params(), (2, width)))
    self.blocks = Stack(depth, lambda r: Block(
        width, heads, mlp_hidden=int(mlp_ratio * width), mlp="gelu_tanh", norm_eps=1e-6,
        norm_affine=False, adaln=True, implementation=attention_impl, qkv_init=_INIT,
        out_init=_INIT, mlp_init=_INIT, dtype=dtype, rngs=r),
        scan_layers=scan_layers, remat=remat, rngs=rngs)
    self.final_norm = Norm(width, eps=1e-6, affine=False, dtype=dtype, rngs=rngs)
    self.final_ada = Dense(width, 2 * width, ("embed", "mlp"), kernel_init=nnx.initializers.zeros,
                           dtype=dtype, rngs=rngs)
    self.out = Dense(width, token_dim, ("embed", None), kernel_init=nnx.initializers.zeros,
                     dtype=dtype, rngs=rngs)

  def _check_tokens(self, name: str, x: jax.Array) -> None:
    want = (self.seq_len, self.token_dim)
    if not hasattr(x, "shape") or x.ndim != 3 or tuple(x.shape[1:]) != want:
      raise ValueError(f"{name} must be float [B, {want[0]}, {want[1]}] (seq_len, token_dim), got "
                       f"{getattr(x, 'shape', type(x).__name__)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(f"{name} must be floating, got {x.dtype}")

  def project_text(self, text: jax.Array, rng: jax.Array | None = None):
    """(Z_T, mean, logvar) float32 [B, K, D] of CLIP features text [B, K, C]: Z_T drawn from
    N(mean, exp(logvar)) with rng, the mean without."""
    want = (self.seq_len, self.text_dim)
    if not hasattr(text, "shape") or text.ndim != 3 or tuple(text.shape[1:]) != want:
      raise ValueError(f"text must be float [B, {want[0]}, {want[1]}] (text length = seq_len, "
                       f"text_dim), got {getattr(text, 'shape', type(text).__name__)}")
    mean, logvar = self.projector(text)
    z = mean if rng is None else vae.sample(mean, logvar, rng)
    return z, mean, logvar

  def align_features(self, z: jax.Array) -> jax.Array:
    """Z_T [B, K, D] -> [B, P] float32: the alignment MLP on the flattened tokens."""
    h = jax.nn.gelu(self.align_fc1(z.reshape(z.shape[0], -1).astype(jnp.float32)), approximate=False)
    return self.align_fc2(h).astype(jnp.float32)

  def check_pooled(self, pooled: jax.Array, batch: int) -> None:
    if pooled.ndim != 2 or pooled.shape != (batch, self.pooled_dim):
      raise ValueError(f"pooled must be float [B={batch}, pooled_dim={self.pooled_dim}], got "
                       f"{tuple(pooled.shape)}")

  def alignment_loss(self, z: jax.Array, pooled: jax.Array) -> jax.Array:
    """L_align float32 scalar of Z_T [B, K, D] against the CLIP pooled features [B, P]."""
    self.check_pooled(pooled, z.shape[0])
    scale = jnp.minimum(self.logit_scale.get_value(), _LOGIT_SCALE_MAX)
    return clip_contrastive_loss(pooled, self.align_features(z), scale)

  def velocity(self, x: jax.Array, t: jax.Array, null: jax.Array | None = None) -> jax.Array:
    """v float32 [B, K, D] at x [B, K, D], times t (scalar or [B], 0 = source, 1 = target) and
    indicator null [B] (int or bool; 1 = the null branch of guidance; None = all 0)."""
    self._check_tokens("x", x)
    b = x.shape[0]
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,))
    flag = jnp.zeros((b,), jnp.int32) if null is None else jnp.asarray(null).astype(jnp.int32)
    # DiT's TimestepEmbedder as CrossFlow calls it: t in [0, 1] unscaled.
    temb = self.time_out(jax.nn.silu(self.time_in(timestep_embedding(t, _FREQ, scale=1.0))))
    c = temb + jnp.take(self.indicator.get_value(), flag, axis=0)
    pos = sincos_1d(np.arange(self.seq_len), self.width)  # fixed table (DiT's frozen sin-cos)
    h = (self.token_in(x.astype(jnp.float32)) + pos).astype(self.dtype)
    h = self.blocks(h, cond=c.astype(self.dtype))
    shift, scale = jnp.split(self.final_ada(jax.nn.silu(c)), 2, axis=-1)
    h = self.final_norm(h) * (1 + scale[:, None]) + shift[:, None]
    return self.out(h).astype(jnp.float32)

  def endpoints(self, z_text: jax.Array, image: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(x0, x1) of this model's direction from text tokens and image tokens [B, K, D]."""
    return (z_text, image) if self.direction == "t2i" else (image, z_text)


def _text(labels: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
  if not isinstance(labels, Mapping) or "text" not in labels or "pooled" not in labels:
    raise TypeError(f"FlowTok labels must be a text-condition dict with 'text' [B, T, C] and "
                    f"'pooled' [B, P], got {type(labels).__name__}"
                    f"{sorted(labels) if isinstance(labels, Mapping) else ''}")
  return jnp.asarray(labels["text"]), jnp.asarray(labels["pooled"])


def loss(model: FlowTok, tokens: jax.Array, labels: Mapping[str, jax.Array], *, rng: jax.Array,
         train: bool = True, step=None):
  """L = L_fm + kl_weight L_kld + align_weight L_align (module docstring) and metrics {loss,
  flow_loss, kl, align, logit_scale, mean_t}.

  tokens: image tokens float [B, K, D]; labels: {"text" [B, K, C], "pooled" [B, P], ...}. The key
  is split into (Z_T draw, t draw, indicator draw); train=False draws no indicator (all 0). `step`
  does not change the objective (the generator loss contract).
  """
  del step
  model._check_tokens("tokens", tokens)
  text, pooled = _text(labels)
  if text.shape[0] != tokens.shape[0]:
    raise ValueError(f"labels['text'] must have the tokens' batch size {tokens.shape[0]}, got "
                     f"{text.shape[0]}")
  model.check_pooled(pooled, tokens.shape[0])
  r_z, r_t, r_null = jax.random.split(rng, 3)
  b = tokens.shape[0]
  z, mean, logvar = model.project_text(text, r_z)
  x0, x1 = model.endpoints(z, tokens.astype(jnp.float32))
  null = (jax.random.bernoulli(r_null, model.cfg_prob, (b,)) if train and model.cfg_prob > 0
          else jnp.zeros((b,), bool))
  x1 = shuffle_null_targets(x1, null)
  t = logit_normal(r_t, (b,))
  v = model.velocity(interpolate(x0, x1, t), t, null)
  fm = jnp.mean(jnp.square(v - (x1 - x0)))
  kl = jnp.mean(vae.kl_divergence(mean, logvar))
  align = model.alignment_loss(z, pooled)
  value = fm + model.kl_weight * kl + model.align_weight * align
  return value, {"loss": value, "flow_loss": fm, "kl": kl, "align": align,
                 "logit_scale": jnp.exp(model.logit_scale.get_value()), "mean_t": t.mean()}


# ---- sampling -------------------------------------------------------------------------------

def transport(velocity_fn: Callable, x: jax.Array, *, steps: int, reverse: bool = False,
              method: str = "euler", cfg_scale=1.0) -> jax.Array:
  """Integrates dx/dt = velocity_fn(x, t, null) (null int32 [B]: 0 conditional, 1 the guidance
  branch) from t = 0 to 1, or with reverse=True from t = 1 back to 0 (`flow.flip_time`), with
  `samplers.flow.sample` (Euler or Heun, `steps` uniform steps). Guidance u + s (c - u) runs unless
  cfg_scale is the Python number 1 (a traced scale always runs both branches). Returns float32
  with x's shape."""
  fn = flow.flip_time(velocity_fn) if reverse else velocity_fn
  b = x.shape[0]
  guided = not (isinstance(cfg_scale, (int, float)) and cfg_scale == 1)
  return flow.sample(fn, x, jnp.zeros((b,), jnp.int32), steps=steps, method=method,
                     uncond=jnp.ones((b,), jnp.int32) if guided else None, cfg_scale=cfg_scale)


def _model_fn(model: FlowTok) -> Callable:
  return lambda x, t, null: model.velocity(x, t, null)


def text_to_image(model: FlowTok, rng: jax.Array | None, text: jax.Array, *, steps: int = 50,
                  method: str = "euler", cfg_scale=1.0) -> jax.Array:
  """Image tokens float32 [B, K, D] from CLIP features text [B, K, C]: Z_T drawn with rng (its
  mean with rng None), then the flow: forward for a "t2i" model, backward for an "i2t" one."""
  z, _, _ = model.project_text(jnp.asarray(text), rng)
  return transport(_model_fn(model), z, steps=steps, reverse=model.direction == "i2t",
                   method=method, cfg_scale=cfg_scale)


def image_to_text(model: FlowTok, image: jax.Array, *, steps: int = 50, method: str = "euler",
                  cfg_scale=1.0) -> jax.Array:
  """Text tokens Z_T float32 [B, K, D] from image tokens [B, K, D]: forward for an "i2t" model,
  the same ODE integrated backward for a "t2i" one. (Turning Z_T into a caption needs a text
  decoder, which this module does not have.)"""
  model._check_tokens("image", image)
  return transport(_model_fn(model), jnp.asarray(image, jnp.float32), steps=steps,
                   reverse=model.direction == "t2i", method=method, cfg_scale=cfg_scale)


def sample(model: FlowTok, rng: jax.Array, cond: Mapping[str, jax.Array],
           null: Mapping[str, jax.Array] | None = None, **settings: Any) -> jax.Array:
  """Image tokens float32 [B, K, D] for the captions' cond {"text", ...} (`text_to_image` with
  settings steps / method / cfg_scale). null (the empty caption's features) is unused: FlowTok's
  guidance branch is the indicator, not a caption."""
  del null
  if not isinstance(cond, Mapping) or "text" not in cond:
    raise TypeError(f"cond must be a text-condition dict with 'text' [B, T, C], got "
                    f"{type(cond).__name__}{sorted(cond) if isinstance(cond, Mapping) else ''}")
  return text_to_image(model, rng, cond["text"], **settings)


def make_model(cfg: Mapping, *, rngs: nnx.Rngs) -> FlowTok:
  """A FlowTok from its constructor's fields plus `nn.options.COMMON` and `name`; any other key
  raises ValueError."""
  return FlowTok(**model_kwargs(cfg, FIELDS, model="flowtok", cls=FlowTok), rngs=rngs)

