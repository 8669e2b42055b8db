"""MaskGen-VQ (Kim et al. 2025, arXiv 2501.07730): text-to-image masked generation over TA-TiTok's
discrete tokens, with MM-DiT blocks.

bytedance/1d-tokenizer `modeling/maskgen.py` `MaskGen_VQ` (checked at its HEAD), composed from the
shared parts:

  condition c:  the CLIP text tower's penultimate hidden states [B, T, C] (`nn.clip_text`
                "penultimate", T = 77, C = 768) -> text_embed_proj -> [B, T, W]
  pooled p:     concat(CLIP pooled [B, C], sinusoid(100 * aesthetic score) [B, A]) -> cond_pooled_proj
                -> [B, W]   (micro-conditioning; A = 256; without it only the pooled features)
  x:            token embeddings [B, K, W] (ids in [0, V]: V = codebook size = the mask id) + pos_embed
  blocks:       `JointBlock` x L (SD3's MM-DiT / diffusers `JointTransformerBlock`): the image and
                the text streams keep their own weights (AdaLN-zero from p, LayerNorm without affine,
                eps 1e-6, tanh-GELU MLP 4x) and attend jointly over [x; c]; the last block only
                reads the text (its text stream stops after the attention projections).
  out:          LayerNorm(x) * (1 + scale(p)) + shift(p) (AdaLayerNormContinuous), logits = x @
                embeddings[:V]^T (the head is tied to the token table).

Each stream of a JointBlock is a shared `nn.Block` (adaln=True) whose parts run the MM-DiT order;
the joint attention is `nn.attention.attend` over the two streams' q, k, v (no new attention),
through the public `Block.modulation`, `Attention.project` and `Attention.output`.

Training (`loss`): per sample u ~ U(0, 1), n = max(1, round(K arccos(u) / (pi/2))) positions masked
(`bert.random_mask`), cross-entropy with label smoothing 0.1 on masked tokens and weight 0.1 on the
others (the release's MLMLoss; `bert.loss`'s objective); the caption is replaced by the empty
caption's features with probability text_drop_prob (0.1). Sampling: `sample` runs the release's
procedure (`samplers.maskgit_released`, guidance decay "maskgen_cosine") with the empty caption as
the unconditional branch.

The condition is a dict (pytree, batch axis 0):
  {"text": [B, T, C], "pooled": [B, C], "aesthetic": [B] (optional: default sample_aesthetic_score),
   "null_text": [B, T, C], "null_pooled": [B, C] (training only: the empty caption's features)}.

Dimension names: B batch, K tokens, V codebook size, W width, T text length, C text width, A micro-
condition width, L depth.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.generators import bert
from jaxtok.nn.attention import attend
from jaxtok.nn.block import Block
from jaxtok.nn.dense import Dense
from jaxtok.nn.embeddings import sincos_1d, trunc_normal
from jaxtok.nn.norm import Norm
from jaxtok.nn.options import model_kwargs
from jaxtok.sharding import logical_init

_EPS = 1e-6


def _stream(width, heads, dtype, attention_impl, rngs) -> Block:
  """One MM-DiT stream: AdaLN-zero pre-norm block (LayerNorm without affine, eps 1e-6, tanh GELU)."""
  return Block(width, heads, mlp_hidden=4 * width, mlp="gelu_tanh", norm_eps=_EPS,
               norm_affine=False, adaln=True, implementation=attention_impl, dtype=dtype,
               qkv_init=trunc_normal(0.02), out_init=trunc_normal(0.02),
               mlp_init=trunc_normal(0.02), rngs=rngs)


def _modulated(norm, x, shift, scale):
  return norm(x) * (1 + scale) + shift


class JointBlock(nnx.Module):
  """MM-DiT block over the image tokens x [B, K, W] and text tokens c [B, T, W], conditioned on
  p [B, W]; returns (x, c) (c None after a `context_pre_only` block).

  Per stream (its own Block: ada, norm1, attn, norm2, mlp), with (shift, scale, gate) modulations of
  silu(p): h = norm1(s) * (1 + scale_msa) + shift_msa; q, k, v of both streams attend jointly
  over [x; c]; s += gate_msa * out(attention); s += gate_mlp * mlp(norm2(s) * (1 + scale_mlp) +
  shift_mlp). context_pre_only (the last block): the text stream is only normalised by
  LayerNorm * (1 + scale) + shift (scale, shift from `context_ada`) and projected to k, v (and q).
  """

  def __init__(self, width: int, heads: int, *, context_pre_only: bool, dtype=jnp.float32,
               attention_impl=None, rngs: nnx.Rngs):
    self.context_pre_only, self.width, self.heads = context_pre_only, width, heads
    self.image = _stream(width, heads, dtype, attention_impl, rngs)
    if context_pre_only:
      self.context = None
      self.context_norm = Norm(width, eps=_EPS, affine=False, dtype=dtype, rngs=rngs)
      self.context_ada = Dense(width, 2 * width, ("embed", "mlp"), dtype=dtype, rngs=rngs)
      self.context_qkv = Dense(width, 3 * width, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    else:
      self.context = _stream(width, heads, dtype, attention_impl, rngs)

  def __call__(self, x: jax.Array, c: jax.Array, p: jax.Array):
    bx = self.image
    gx_msa, gx_mlp, shx_msa, scx_msa, shx_mlp, scx_mlp = bx.modulation(p, None, x.shape[1])
    qx, kx, vx = bx.attn.project(_modulated(bx.norm1, x, shx_msa, scx_msa))
    if self.context_pre_only:
      scale, shift = jnp.split(self.context_ada(jax.nn.silu(p)), 2, axis=-1)
      hc = _modulated(self.context_norm, c, shift[:, None], scale[:, None])
      b, t, _ = c.shape
      qc, kc, vc = jnp.moveaxis(self.context_qkv(hc).reshape(b, t, 3, self.heads, -1), 2, 0)
    else:
      bc = self.context
      gc_msa, gc_mlp, shc_msa, scc_msa, shc_mlp, scc_mlp = bc.modulation(p, None, c.shape[1])
      qc, kc, vc = bc.attn.project(_modulated(bc.norm1, c, shc_msa, scc_msa))
    cat = lambda a, b: jnp.concatenate([a, b.astype(a.dtype)], axis=1)
    y = attend(cat(qx, qc), cat(kx, kc), cat(vx, vc), implementation=bx.attn.implementation)
    k = x.shape[1]
    x = x + gx_msa * bx.attn.output(y[:, :k])
    x = x + gx_mlp * bx.mlp(_modulated(bx.norm2, x, shx_mlp, scx_mlp))
    if self.context_pre_only:
      return x, None
    c = c + gc_msa * bc.attn.output(y[:, k:])
    c = c + gc_mlp * bc.mlp(_modulated(bc.norm2, c, shc_mlp, scc_mlp))
    return x, c


def pooled_with_micro_condition(model: Any, cond: Mapping[str, jax.Array],
                                embed=None) -> jax.Array:
  """cond["pooled"] [B, C] float32, followed (when model.micro_condition) by the aesthetic score's
  embedding `embed(score [B], dim)` (default `aesthetic_embedding`; MaskGen-KL has its own) of
  cond["aesthetic"] [B] or model.sample_aesthetic_score: [B, C (+ micro dim)]."""
  embed = aesthetic_embedding if embed is None else embed
  pooled = jnp.asarray(cond["pooled"], jnp.float32)
  if model.micro_condition:
    score = cond.get("aesthetic")
    if score is None:
      score = jnp.full(pooled.shape[:1], model.sample_aesthetic_score, jnp.float32)
    pooled = jnp.concatenate([pooled, embed(score, model.micro_condition_dim)], -1)
  return pooled


def aesthetic_embedding(score: jax.Array, dim: int) -> jax.Array:
  """MaskGen-VQ's micro-condition float32 [B, dim] of aesthetic scores [B]: [sin, cos] of
  100 * score * 1000^(-i / (dim/2)) (its `get_sinusoidal_encoding`, max_period 1000), zero-padded
  when dim is odd."""
  half = dim // 2
  emb = sincos_1d(jnp.asarray(score, jnp.float32) * 100.0, 2 * half, max_period=1000.0)
  return jnp.pad(emb, ((0, 0), (0, dim - 2 * half)))


class MaskGenVQ(nnx.Module):
  """Logits [B, K, V] float32 of tokens int32 [B, K] (V = mask id) given the text condition.

  Args:
    codebook_size: V; seq_len: K; num_classes: the release's unused class rows of the token table
      (1000, kept so the released table [V + 1 + num_classes + 1, W] loads).
    width, depth, heads: W, L and the head count.
    text_dim: C; micro_condition (aesthetic score), micro_condition_dim: A.
    text_drop_prob: the caption dropout of training; sample_aesthetic_score: the score used when a
      condition has none (the released configs' 6.5).
    dtype, attention_impl: `nn.options` (remat and scan_layers are refused: the blocks differ).
  """

  def __init__(self, *, codebook_size: int = 8192, seq_len: int = 128, num_classes: int = 1000,
               width: int = 1024, depth: int = 16, heads: int = 16, text_dim: int = 768,
               micro_condition: bool = True, micro_condition_dim: int = 256,
               text_drop_prob: float = 0.1, sample_aesthetic_score: float = 6.5,
               dtype: Any = jnp.float32, remat: Any = "none", scan_layers: bool = False,
               attention_impl: Any = None, rngs: nnx.Rngs):
    for name, v in (("codebook_size", codebook_size), ("seq_len", seq_len), ("width", width),
                    ("depth", depth), ("heads", heads), ("text_dim", text_dim)):
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"MaskGen {name} must be an int >= 1, got {v!r}")
    if scan_layers or remat not in ("none", False):
      raise ValueError(f"MaskGen runs unrolled blocks without remat (its last block differs), got "
                       f"scan_layers={scan_layers!r}, remat={remat!r}")
    if not 0.0 <= text_drop_prob < 1.0:
      raise ValueError(f"text_drop_prob must be in [0, 1), got {text_drop_prob}")
    self.codebook_size, self.seq_len, self.num_classes = codebook_size, seq_len, num_classes
    self.text_dim, self.micro_condition = text_dim, bool(micro_condition)
    self.micro_condition_dim, self.text_drop_prob = micro_condition_dim, float(text_drop_prob)
    self.sample_aesthetic_score, self.dtype = float(sample_aesthetic_score), dtype
    dense = lambda i, o: Dense(i, o, ("embed", "mlp"), dtype=dtype, rngs=rngs)
    self.text_embed_proj = dense(text_dim, width)
    self.cond_pooled_proj = dense(text_dim + (micro_condition_dim if micro_condition else 0), width)
    self.blocks = nnx.List([JointBlock(width, heads, context_pre_only=i == depth - 1, dtype=dtype,
                                       attention_impl=attention_impl, rngs=rngs)
                            for i in range(depth)])
    self.norm = Norm(width, eps=_EPS, affine=False, dtype=dtype, rngs=rngs)
    self.norm_ada = Dense(width, 2 * width, ("embed", "mlp"), kernel_init=nnx.initializers.zeros,
                          dtype=dtype, rngs=rngs)
    self.embeddings = nnx.Param(logical_init(trunc_normal(0.02), "vocab", "embed")(
        rngs.params(), (codebook_size + 2 + num_classes, width), jnp.float32))
    self.pos_embed = nnx.Param(logical_init(trunc_normal(0.02), None, "embed")(
        rngs.params(), (seq_len, width), jnp.float32))

  @property
  def mask_id(self) -> int:
    return self.codebook_size

  def _pooled(self, cond: Mapping[str, jax.Array]) -> jax.Array:
    return self.cond_pooled_proj(pooled_with_micro_condition(self, cond))

  def __call__(self, tokens: jax.Array, cond: Mapping[str, jax.Array]) -> jax.Array:
    """Logits float32 [B, K, V] for tokens int32 [B, K] in [0, V] and cond {"text", "pooled"[,
    "aesthetic"]} (module docstring)."""
    b, k = tokens.shape
    if k != self.seq_len:
      raise ValueError(f"tokens must have seq_len={self.seq_len} positions, got {k}")
    text = cond["text"]
    if text.ndim != 3 or text.shape[0] != b or text.shape[-1] != self.text_dim:
      raise ValueError(f"cond['text'] must be [B={b}, T, text_dim={self.text_dim}], got "
                       f"{tuple(text.shape)}")
    table = self.embeddings.get_value()
    x = (jnp.take(table, tokens, axis=0) + self.pos_embed.get_value()).astype(self.dtype)
    c = self.text_embed_proj(jnp.asarray(text, jnp.float32))
    p = self._pooled(cond)
    for blk in self.blocks:
      x, c = blk(x, c, p)
    scale, shift = jnp.split(self.norm_ada(jax.nn.silu(p)), 2, axis=-1)
    x = _modulated(self.norm, x, shift[:, None], scale[:, None])
    return jnp.einsum("bkw,vw->bkv", x.astype(jnp.float32), table[:self.codebook_size])


def drop_text(cond: Mapping[str, jax.Array], prob: float, rng: jax.Array) -> dict:
  """cond with, per sample with probability `prob`, text/pooled replaced by null_text/null_pooled
  (the release's caption dropout towards the empty caption)."""
  b = cond["text"].shape[0]
  drop = jax.random.bernoulli(rng, prob, (b,))
  out = {k: v for k, v in cond.items() if not k.startswith("null_")}
  out["text"] = jnp.where(drop[:, None, None], cond["null_text"], cond["text"])
  out["pooled"] = jnp.where(drop[:, None], cond["null_pooled"], cond["pooled"])
  return out


def loss(model: MaskGenVQ, tokens: jax.Array, labels, *, rng: jax.Array,
         label_smoothing: float = 0.1, unmasked_weight: float = 0.1, train: bool = True, step=None):
  """Masked-token cross-entropy (`bert.loss`'s objective) given the text condition `labels` (the
  dict of the module docstring, with null_text / null_pooled for caption dropout when train)."""
  del step
  r_mask, r_drop = jax.random.split(rng)
  cond = drop_text(labels, model.text_drop_prob, r_drop) if train and model.text_drop_prob > 0 \
      else {k: v for k, v in labels.items() if not k.startswith("null_")}
  b, n = tokens.shape
  mask = bert.random_mask(r_mask, b, n)
  logits = model(jnp.where(mask, model.mask_id, tokens), cond)
  return bert.masked_ce(logits, tokens, mask, model.codebook_size, label_smoothing,
                        unmasked_weight)


# The released sampling settings (configs/infer/MaskGen/maskgen_vq_*.yaml and MaskGen_VQ.generate's
# defaults: guidance_decay "cosine" with power 1, softmax temperature annealing, 16 steps).
SAMPLING = dict(steps=16, guidance_scale=12.0, randomize_temperature=2.0,
                guidance_decay="maskgen_cosine", guidance_scale_pow=1.0,
                softmax_temperature_annealing=True)


def sample(model: MaskGenVQ, rng: jax.Array, cond: Mapping[str, jax.Array],
           null: Mapping[str, jax.Array] | None = None, **settings: Any) -> jax.Array:
  """Tokens int32 [B, K] for the captions' cond (`samplers.maskgit_released` with `SAMPLING`
  overridden by settings); null: the empty caption's {"text" [1 or B, T, C], "pooled" [1 or B, C]}
  for guidance (None: unguided)."""
  from jaxtok.samplers import maskgit_released  # pylint: disable=g-import-not-at-top
  b = cond["text"].shape[0]
  cond = dict(cond)
  if model.micro_condition and cond.get("aesthetic") is None:
    cond["aesthetic"] = jnp.full((b,), model.sample_aesthetic_score, jnp.float32)
  uncond = None
  if null is not None:
    uncond = {k: jnp.broadcast_to(null[k], (b,) + tuple(null[k].shape[1:])) for k in ("text", "pooled")}
    if "aesthetic" in cond:
      uncond["aesthetic"] = cond["aesthetic"]
  tokens = jnp.full((b, model.seq_len), model.mask_id, jnp.int32)
  out, _ = maskgit_released.sample(rng, lambda tok, c: model(tok, c), tokens, mask_id=model.mask_id,
                                   cond=cond, uncond=uncond, **{**SAMPLING, **settings})
  return out


FIELDS = ("codebook_size", "seq_len", "num_classes", "width", "depth", "heads", "text_dim",
          "micro_condition", "micro_condition_dim", "text_drop_prob", "sample_aesthetic_score")


def make_model(cfg: Mapping, *, rngs: nnx.Rngs) -> MaskGenVQ:
  """A MaskGenVQ from its constructor's fields plus `nn.options.COMMON` and `name`; any other key
  raises ValueError."""
  return MaskGenVQ(**model_kwargs(cfg, FIELDS, model="maskgen", cls=MaskGenVQ), rngs=rngs)


def text_condition(features: Mapping[str, Any]) -> dict[str, jax.Array]:
  """MaskGen's condition from `text.encoder.TextEncoder` outputs: {"text": penultimate, "pooled"}."""
  return {"text": jnp.asarray(features["penultimate"]), "pooled": jnp.asarray(features["pooled"])}

