"""Instella-T2I's released text-to-image binary diffusion network (`Instella_Binary_Diff`).

AMD's Instella-T2I (vendored in sprintml/BitMark, `Instella-T2I/models/diff_model.py`,
`models/llama_attn.py`, `scripts/train_diff.py`) generates the bit tokens of its binary autoencoder
(`tokenizers/instella_bae.py`: N = 128 tokens of n = 64 bits) from the hidden states of the
AMD-OLMo-1B text model. This module is that network, composed of the shared parts:

  x      = Linear(n, W)(bits)                                               x_embedder
  temb   = Linear(W, W)(silu(Linear(1, W)(t)))   (diffusers TimestepEmbedding of the raw t in [0, 1])
  per block l (one `InstellaLayer`: a shared `nn.Block` with adaln=True, plus proj_cond and pos):
    h    = LayerNorm(x) * (1 + scale_msa) + shift_msa        (AdaLayerNormZero, no affine, eps 1e-6)
    h    = h + pos_l                                          (learned [N, W], not in the residual)
    y    = attention with queries from h, keys/values over [proj_cond_l(features[l]); h]
           (q/k/v/o without bias, per-head RMSNorm with weight on q and k, eps 1e-6; text keys masked
           by the text mask, image keys always visible)
    x    = x + gate_msa * y
    x    = x + gate_mlp * FF(LayerNorm(x) * (1 + scale_mlp) + shift_mlp)    (GELU-tanh, 4W, biases)
  out    = Linear(W, n)(LayerNorm(x) * (1 + scale) + shift),  (scale, shift) = Linear(silu(temb))
           (AdaLayerNormContinuous: diffusers' chunk order is (scale, shift))
The output is n flip logits per token ("epsilon" target: the logit of x_0 != x_t).

The condition (the text tower's output, `nn.olmo`, computed by the caller):
  features float32 [L, B, T, Dt]: HF `hidden_states[1:]`, one per block (L = depth);
  mask int [B, T]: 1 = token, 0 = padding (the release's tokenizer pads on the LEFT).
The release's attention is flash-attention's varlen call (`_flash_attention_forward` with the
joint mask [text mask; ones]): padded keys are dropped, every image query is kept (the query mask is
the mask's last N entries, all ones). Here the same as a boolean mask [B, 1, N, T + N]
(`attention_mask`). A row whose mask is all zeros attends only to the image tokens.

Training (`loss`, the release's `scripts/train_diff.py`): t ~ logit-normal (its configs'
`non_uniform_t`), x_t ~ Bernoulli(x_0 (1 - t) + t / 2), x_0 logits (1 - 2 x_t) f, binary
cross-entropy against x_0, mean over every bit; with probability uncond_prob (0.1) a sample's caption
is replaced by the empty prompt ''. The empty prompt's features are the CALLER's `null` condition:
the release tokenizes '' with the OLMo tokenizer (left padding to the batch's length) and runs OLMo
on it; whether that adds special tokens is the tokenizer's business, so this module does not guess.
(If the tokenizer adds none, as allenai's OLMo HF tokenizers do by default, not checked here for
AMD-OLMo-1B's files, '' is an all-padding row: its mask is all zeros, every text key is masked, its
features never reach the network (tested), and null = (any features, zeros [1, T]) is exact.) The release's `bae_scale` (1024, both generator
configs) is `BAE_Model.set_scale(1024)`: the autoencoder's RoPE positions scaled by 1024 / patch 16
= 64 in encoder and decoder, so it decides which bits an image encodes to, but it is not part of
the generator: the training bits must come from the autoencoder converted with rope_scale 64
(`convert/instella.py`'s released config), and samples decode through the same.

Sampling (`sample`): `samplers.binary_diffusion` (the release's `BinaryDiffusion.sample`: times
(1 - i/S)^rho, temperature, then (1 + w) c - w u with the null condition as u, protocol 1 or 2,
thresholded last step).

Not matched (documented): initialisation (the release applies xavier-uniform to every Linear,
including the AdaLN ones; here the AdaLN Dense is zero-initialised by `nn.Block`, adaLN-zero, the
rest xavier-uniform); gradient checkpointing is `remat`; layers are unrolled (scan_layers is refused:
each layer reads its own text feature). Converted weights: `convert/instella_t2i.py`.

Dimension names: B batch, N image tokens, n bits per token, W width, L depth, T text length,
Dt text width.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.generators.binary_diffusion import (bce_with_logits, check_bits, corrupt,
                                                sample_times, x0_logits, TIME_SAMPLING)
from jaxtok.nn.attention import KVCache
from jaxtok.nn.block import Block
from jaxtok.nn.dense import Dense
from jaxtok.nn.norm import Norm
from jaxtok.nn.options import model_kwargs
from jaxtok.nn.stack import remat_call
from jaxtok.sharding import logical_init

FIELDS = ("num_bits", "seq_len", "text_dim", "width", "depth", "heads", "uncond_prob",
          "time_sampling")
_EPS = 1e-6
_XAVIER = nnx.initializers.xavier_uniform()
# xavier-uniform per q, k, v [W, W] of the fused qkv [W, 3, H, E], and of out [H, E, W].
_QKV_INIT = nnx.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=0,
                                              out_axis=(2, 3), batch_axis=(1,))
_OUT_INIT = nnx.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1),
                                              out_axis=2)


def attention_mask(mask: jax.Array, n: int, *, causal: bool) -> jax.Array:
  """bool [B, 1, n, T + n]: which of the keys [text; image] each image query sees.

  Text key j: mask[:, j] != 0. Image key k: always (causal=False), or k <= the query's index
  (causal=True). This is flash-attention's varlen call on the joint mask [mask; ones] with causal
  masks aligned bottom-right (flash-attn >= 2.1, as the release's `is_flash_attn_greater_or_equal_2_10`
  selects): after dropping the padded keys, query i of n sits at key position K_b - n + i, K_b the
  row's number of kept keys, i.e. it sees every kept text key and image keys 0..i.
  """
  text = jnp.broadcast_to((mask != 0)[:, None, None, :], (mask.shape[0], 1, n, mask.shape[1]))
  image = jnp.tril(jnp.ones((n, n), bool)) if causal else jnp.ones((n, n), bool)
  image = jnp.broadcast_to(image, (mask.shape[0], 1, n, n))
  return jnp.concatenate([text, image], axis=-1)


def check_condition(features: jax.Array, mask: jax.Array, *, depth: int, text_dim: int) -> None:
  """ValueError unless features is [depth, B, T, text_dim] and mask [B, T] (an integer or bool
  array)."""
  if features.ndim != 4 or features.shape[0] != depth or features.shape[3] != text_dim:
    raise ValueError(f"features must be [L={depth}, B, T, Dt={text_dim}] (one text hidden state "
                     f"per block), got {tuple(features.shape)}")
  if mask.shape != features.shape[1:3]:
    raise ValueError(f"mask must be [B, T] = {tuple(features.shape[1:3])} (the features' batch and "
                     f"text length), got {tuple(mask.shape)}")
  if not (jnp.issubdtype(mask.dtype, jnp.integer) or mask.dtype == jnp.bool_):
    raise TypeError(f"mask must be an integer or bool array (1 = token, 0 = padding), got "
                    f"{mask.dtype}")


def drop_condition(rng: jax.Array, features: jax.Array, mask: jax.Array, null, prob: float):
  """(features, mask) with each sample's row replaced, with probability prob, by the null
  condition `null` = (features [L, 1 or B, T, Dt], mask [1 or B, T]), the empty prompt's (the
  release's uncond_prob text dropout)."""
  if null is None:
    raise ValueError(f"uncond_prob {prob} > 0 needs null=(features [L, 1 or B, T, Dt], mask [1 or "
                     f"B, T]): the empty prompt's OLMo features at the batch's text length")
  null_f, null_m = null
  b = mask.shape[0]
  null_f = jnp.broadcast_to(null_f, features.shape)
  null_m = jnp.broadcast_to(null_m, mask.shape)
  drop = jax.random.bernoulli(rng, prob, (b,))
  return (jnp.where(drop[None, :, None, None], null_f, features),
          jnp.where(drop[:, None], null_m, mask).astype(mask.dtype))


class InstellaLayer(nnx.Module):
  """One released block: a shared `Block` (pre-norm; AdaLN-zero with LayerNorm without affine for
  the diffusion model, RMSNorm with weight for the AR model; q/k/v/o without bias, per-head RMSNorm
  on q and k, GELU-tanh FF 4W), plus proj_cond Linear(Dt, W) of this layer's text feature and a
  learned position embedding pos [P, W] (zeros, as the release) added to the normed attention
  input. init: the kernels' initializer; None = xavier-uniform per projection (the diffusion
  release's `_basic_init`)."""

  def __init__(self, width: int, heads: int, text_dim: int, positions: int, *, adaln: bool,
               dtype, attention_impl, rngs: nnx.Rngs, init=None):
    qkv_init, out_init = (_QKV_INIT, _OUT_INIT) if init is None else (init, init)
    init = _XAVIER if init is None else init
    self.block = Block(width, heads, mlp_hidden=4 * width, mlp="gelu_tanh",
                       norm="layer" if adaln else "rms", norm_eps=_EPS, norm_affine=not adaln,
                       adaln=adaln, qkv_bias=False, out_bias=False, qk_norm="rms",
                       qk_norm_eps=_EPS, qk_norm_affine=True, implementation=attention_impl,
                       dtype=dtype, qkv_init=qkv_init, out_init=out_init, mlp_init=init,
                       rngs=rngs)
    self.proj_cond = Dense(text_dim, width, (None, "embed"), kernel_init=init, dtype=dtype,
                           rngs=rngs)
    self.pos = nnx.Param(logical_init(nnx.initializers.zeros, None, "embed")(
        rngs.params(), (positions, width), jnp.float32))

  def __call__(self, x: jax.Array, *, feature: jax.Array, mask: jax.Array,
               cond: jax.Array | None = None) -> jax.Array:
    """x [B, M, W], this layer's text feature [B, T, Dt], mask bool [B, 1, M, T + M]
    (`attention_mask`), cond [B, W] (temb, AdaLN only) -> [B, M, W]."""
    pos = self.pos.get_value()[:x.shape[1]]
    return self.block(x, mask=mask, cond=cond, prefix=self.proj_cond(feature), attn_pos=pos)


  def text_cache(self, feature: jax.Array, length: int, dtype=None) -> KVCache:
    """A KV cache k, v [B, H, T + length, E] whose slots 0..T-1 hold this layer's text keys and
    values (k-normalised, as the attention computes them) and the rest zeros, for `extend`."""
    text = self.block.attn.context_kv(self.proj_cond(feature), dtype=dtype)
    empty = self.block.attn.init_cache(feature.shape[0], length, dtype or text.k.dtype)
    return KVCache(*(jnp.concatenate([a, z.astype(a.dtype)], axis=2) for a, z in zip(text, empty)))

  def extend(self, x: jax.Array, cache: KVCache, slot, position, slot_mask: jax.Array):
    """x [B, 1, W], the image token at `position` (int32, may be traced) written at cache `slot`
    (T + position); slot_mask bool [B, 1, 1, T + length] (text mask, then ones). Returns
    (y [B, 1, W], cache)."""
    pos = jax.lax.dynamic_slice_in_dim(self.pos.get_value(), position, 1)
    return self.block.extend(x, cache, slot, mask=slot_mask, attn_pos=pos)


def run_layers(layers, x: jax.Array, features: jax.Array, mask: jax.Array, *, remat,
               cond=None) -> jax.Array:
  """Every layer l over x with features[l] (float32 [L, B, T, Dt]) and the bool mask."""
  for l, layer in enumerate(layers):
    x = remat_call(layer, x, remat=remat, feature=features[l], mask=mask, cond=cond)
  return x


def check_sizes(*, num_bits, seq_len, text_dim, width, depth, heads, uncond_prob, scan_layers):
  for name, v in (("num_bits", num_bits), ("seq_len", seq_len), ("text_dim", text_dim),
                  ("width", width), ("depth", depth), ("heads", heads)):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"{name} must be an int >= 1, got {v!r}")
  if width % heads:
    raise ValueError(f"width must be divisible by heads, got width={width}, heads={heads}")
  if not 0.0 <= uncond_prob < 1.0:
    raise ValueError(f"uncond_prob must be in [0, 1), got {uncond_prob!r}")
  if scan_layers:
    raise ValueError("scan_layers=True is not supported: each Instella-T2I layer reads its own "
                     "text feature (layers are unrolled)")


class InstellaDiff(nnx.Module):
  """The release's `Instella_Binary_Diff` (module docstring); full size: num_bits 64, seq_len 128,
  text_dim 2048, width 2048, depth 16, heads 16."""

  def __init__(self, *, num_bits: int, seq_len: int, text_dim: int, width: int = 2048,
               depth: int = 16, heads: int = 16, uncond_prob: float = 0.1,
               time_sampling: str = "logit_normal", dtype=jnp.float32, remat="none",
               scan_layers: bool = False, attention_impl=None, rngs: nnx.Rngs):
    check_sizes(num_bits=num_bits, seq_len=seq_len, text_dim=text_dim, width=width, depth=depth,
                heads=heads, uncond_prob=uncond_prob, scan_layers=scan_layers)
    if time_sampling not in TIME_SAMPLING:
      raise ValueError(f"time_sampling must be one of {TIME_SAMPLING}, got {time_sampling!r}")
    self.num_bits, self.seq_len, self.text_dim, self.depth = num_bits, seq_len, text_dim, depth
    self.uncond_prob, self.time_sampling, self.remat = float(uncond_prob), time_sampling, remat
    dense = lambda i, o: Dense(i, o, (None, "embed"), kernel_init=_XAVIER, dtype=dtype, rngs=rngs)
    self.x_embed = dense(num_bits, width)
    self.time_1, self.time_2 = dense(1, width), dense(width, width)
    self.layers = nnx.List([InstellaLayer(width, heads, text_dim, seq_len, adaln=True, dtype=dtype,
                                          attention_impl=attention_impl, rngs=rngs)
                            for _ in range(depth)])
    self.norm_out = Norm(width, eps=_EPS, affine=False, dtype=dtype, rngs=rngs)
    self.out_ada = dense(width, 2 * width)
    self.proj_out = dense(width, num_bits)

  def __call__(self, x_t: jax.Array, t: jax.Array, features: jax.Array,
               mask: jax.Array) -> jax.Array:
    """Flip logits float32 [B, N, n] of noisy bits x_t [B, N, n] (int or float in {0, 1}) at times
    t [B] (or a scalar) in [0, 1], given features float32 [L, B, T, Dt] and mask int [B, T]."""
    check_bits(x_t, self.seq_len, self.num_bits)
    check_condition(features, mask, depth=self.depth, text_dim=self.text_dim)
    b = x_t.shape[0]
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,))
    temb = self.time_2(jax.nn.silu(self.time_1(t[:, None])))
    x = self.x_embed(x_t.astype(jnp.float32))
    x = run_layers(self.layers, x, features, attention_mask(mask, self.seq_len, causal=False),
                   remat=self.remat, cond=temb)
    scale, shift = jnp.split(self.out_ada(jax.nn.silu(temb)), 2, axis=-1)
    x = self.norm_out(x) * (1 + scale[:, None]) + shift[:, None]
    return self.proj_out(x).astype(jnp.float32)


def loss(model: InstellaDiff, bits: jax.Array, features: jax.Array, mask: jax.Array, *,
         rng: jax.Array, null=None, train: bool = True):
  """(mean BCE of the x_0 logits against bits, {loss, accuracy}) as `scripts/train_diff.py`.

  bits int [B, N, n]; features float32 [L, B, T, Dt]; mask int [B, T]; null: the empty prompt's
  (features [L, 1 or B, T, Dt], mask [1 or B, T]) for the text dropout (needed when training with
  uncond_prob > 0); train=False: no text dropout.
  """
  r_t, r_x, r_drop = jax.random.split(rng, 3)
  if train and model.uncond_prob > 0:
    features, mask = drop_condition(r_drop, features, mask, null, model.uncond_prob)
  t = sample_times(r_t, bits.shape[0], model.time_sampling)
  x_t = corrupt(r_x, bits, t)
  logits = x0_logits(model(x_t, t, features, mask), x_t)
  value = jnp.mean(bce_with_logits(logits, bits.astype(jnp.float32)))
  acc = jnp.mean(((logits > 0) == (bits > 0)).astype(jnp.float32))
  return value, {"loss": value, "accuracy": acc}


def guided_condition(features: jax.Array, mask: jax.Array, null, cfg_scale: float):
  """(cond, uncond) pytrees with batch axis 0 for `guidance.call_pair`: (features [B, L, T, Dt],
  mask [B, T]); uncond None without guidance. ValueError when cfg_scale != 0 has no null."""
  cond = (jnp.moveaxis(features, 0, 1), mask)
  if null is None:
    if cfg_scale != 0:
      raise ValueError(f"cfg_scale {cfg_scale} needs null=(features [L, 1 or B, T, Dt], mask "
                       f"[1 or B, T]), the empty prompt's condition")
    return cond, None
  null_f = jnp.broadcast_to(null[0], features.shape)
  null_m = jnp.broadcast_to(null[1], mask.shape).astype(mask.dtype)
  return cond, (jnp.moveaxis(null_f, 0, 1), null_m)


def sample(rng: jax.Array, model: InstellaDiff, features: jax.Array, mask: jax.Array, *,
           null=None, steps: int = 20, rho: float = 1.0, temperature: float = 1.0,
           cfg_scale: float = 0.0, protocol: int = 1) -> jax.Array:
  """Bits int32 [B, N, n] for the text condition (features [L, B, T, Dt], mask [B, T]).

  null: the empty prompt's (features, mask) at the same T, the unconditional half of the guided
  batch; cfg_scale: w of (1 + w) c - w u (the release's guidance_scale, 7.5 in its scripts; 0 =
  unguided). steps, rho, temperature, protocol: `samplers.binary_diffusion.sample`.
  """
  from jaxtok.samplers import binary_diffusion as sampler  # pylint: disable=g-import-not-at-top
  check_condition(features, mask, depth=model.depth, text_dim=model.text_dim)
  cond, uncond = guided_condition(features, mask, null, cfg_scale)
  fn = lambda x, t, c: model(x, t, jnp.moveaxis(c[0], 1, 0), c[1])
  return sampler.sample(rng, fn, (mask.shape[0], model.seq_len, model.num_bits), steps=steps,
                        rho=rho, temperature=temperature, cond=cond, uncond=uncond,
                        cfg_scale=cfg_scale, protocol=protocol)


def make_model(cfg: Mapping, *, rngs: nnx.Rngs) -> InstellaDiff:
  """An InstellaDiff from its constructor's fields plus `nn.options.COMMON`, `name` and `text` (the
  OLMo tower's section, read by `generators.instella_t2i`); any other key raises ValueError."""
  return InstellaDiff(**model_kwargs(cfg, FIELDS, model="instella_diff", extra=("name", "text"),
                                   cls=InstellaDiff),
                      rngs=rngs)
