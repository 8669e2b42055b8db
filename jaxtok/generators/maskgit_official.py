"""TiTok's released MaskGIT generators (bytedance/1d-tokenizer `modeling/maskgit.py`), layer for layer.

jaxtok's own `generators.bert` is a Llama-style stack (RMSNorm, SwiGLU, rotary positions); the
released generator checkpoints use two other layouts, reproduced here exactly so that they load
(`jaxtok.convert.maskgit`):

  arch "bert" (`ImageBert`, TiTok-L-32 / B-64, One-D-Piece): a post-LN BERT encoder (HF BertModel):
    x = LN_emb(word[ids] + position[0..N] + token_type[0])
    per layer: x = LN_1(x + attn(x)); x = LN_2(x + W_o gelu(W_i x))   (biases everywhere, erf GELU,
    LayerNorm eps 1e-12), then lm_head (Linear W -> K with bias).
  arch "uvit" (`UViTBert`, TiTok-S-128): x = embed[ids] + pos; depth//2 "in" blocks whose outputs
    are kept, a mid block, depth//2 "out" blocks each starting with skip = Linear(concat(x, kept.pop()))
    (2W -> W); blocks are pre-LN (LayerNorm eps 1e-5) with qkv without bias and an output projection
    with bias, MLP fc1 -> erf GELU -> fc2; a final LayerNorm, then lm_head.

The interface is `generators.bert.MaskGITTransformer`'s (same id layout: image tokens [0, K), mask
id K, class c at K + 1 + c, null class K + 1 + C; the class id is prepended and its output dropped),
so `generators.bert.loss` and `samplers.maskgit` take these models unchanged. Dropout (0.1 in the
released training config) is not implemented: the forward pass is the inference one; class dropout
(`class_dropout`) is applied when train=True.

Dimension names: B batch, N tokens, K codebook size, C classes, W width, I MLP width.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.generators.bert import MaskGITTransformer
from jaxtok.nn.block import Block
from jaxtok.nn.dense import Dense
from jaxtok.nn.embeddings import LearnedEmbedding, trunc_normal
from jaxtok.nn.norm import Norm
from jaxtok.nn.options import model_kwargs
from jaxtok.nn.stack import Stack, remat_call

ARCHS = ("bert", "uvit")


class OfficialMaskGIT(nnx.Module):
  """ImageBert ("bert") or UViTBert ("uvit"): tokens [B, N] (+ labels [B]) -> logits [B, N, K].

  Both are compositions of `nn.Block`: "bert" a post-norm `nn.Stack` (scan_layers and remat as
  every stack), "uvit" pre-norm blocks in a U shape whose long skips keep each "in" block's
  output (remat per block; the U shape is not a scan, so scan_layers is refused there).
  """

  def __init__(self, *, arch: str = "bert", codebook_size: int, seq_len: int,
               num_classes: int = 1000, width: int = 768, depth: int = 24, heads: int = 16,
               intermediate: int = 3072, class_dropout: float = 0.1, dtype=jnp.float32,
               remat="none", scan_layers: bool = False, attention_impl=None, rngs: nnx.Rngs):
    if arch not in ARCHS:
      raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if codebook_size < 2 or seq_len < 1:
      raise ValueError(f"need codebook_size >= 2 and seq_len >= 1, got {codebook_size}, {seq_len}")
    if arch == "uvit" and depth % 2:
      raise ValueError(f"the uvit arch needs an even depth (in/out block pairs), got {depth}")
    if arch == "uvit" and scan_layers:
      raise ValueError("scan_layers=True needs identical stacked blocks; the uvit arch's long skips "
                       "make it a U of distinct blocks (use arch 'bert' or scan_layers=False)")
    if not 0.0 <= class_dropout < 1.0:
      raise ValueError(f"class_dropout must be in [0, 1), got {class_dropout}")
    self.arch, self.codebook_size, self.seq_len = arch, codebook_size, seq_len
    self.num_classes, self.class_dropout, self.dtype = num_classes, class_dropout, dtype
    self.remat = remat
    vocab = codebook_size + num_classes + 2
    emb = trunc_normal(0.02)
    self.word_embeddings = LearnedEmbedding(vocab, width, init=emb, rngs=rngs)
    self.position_embeddings = LearnedEmbedding(seq_len + 1, width, init=emb, rngs=rngs)
    if arch == "bert":
      self.token_type_embeddings = LearnedEmbedding(2, width, init=emb, rngs=rngs)
      self.emb_norm = Norm(width, eps=1e-12, dtype=dtype, rngs=rngs)
      self.layers = Stack(depth, lambda r: Block(
          width, heads, mlp_hidden=intermediate, post_norm=True, norm_eps=1e-12, qkv_init=emb,
          implementation=attention_impl, dtype=dtype, rngs=r), scan_layers=scan_layers,
                          remat=remat, rngs=rngs)
    else:
      half = depth // 2
      block = lambda: Block(width, heads, mlp_hidden=intermediate, qkv_bias=False,
                            implementation=attention_impl, dtype=dtype, rngs=rngs)
      self.in_blocks = nnx.List([block() for _ in range(half)])
      self.mid_block = block()
      self.out_skips = nnx.List([Dense(2 * width, width, (None, "embed"), dtype=dtype, rngs=rngs)
                                 for _ in range(half)])
      self.out_blocks = nnx.List([block() for _ in range(half)])
      self.norm = Norm(width, dtype=dtype, rngs=rngs)
    self.lm_head = Dense(width, codebook_size, ("embed", "vocab"), dtype=dtype, rngs=rngs)

  mask_id = MaskGITTransformer.mask_id
  null_id = MaskGITTransformer.null_id
  condition_ids = MaskGITTransformer.condition_ids
  input_ids = MaskGITTransformer.input_ids

  def __call__(self, tokens: jax.Array, labels=None, *, train: bool = False, rng=None) -> jax.Array:
    """Logits [B, N, K] float32 for tokens [B, N] int32 in [0, K] (K = mask id); labels int [B]
    (negative = null class) or None (all null)."""
    ids = self.input_ids(tokens, labels, train=train, rng=rng)
    x = self.word_embeddings()[ids] + self.position_embeddings()[None]
    if self.arch == "bert":
      x = self.layers(self.emb_norm(x + self.token_type_embeddings()[0]))
    else:
      x = x.astype(self.dtype)
      skips = []
      for blk in self.in_blocks:
        x = remat_call(blk, x, remat=self.remat)
        skips.append(x)
      x = remat_call(self.mid_block, x, remat=self.remat)
      for skip_linear, blk in zip(self.out_skips, self.out_blocks):
        x = skip_linear(jnp.concatenate([x, skips.pop().astype(x.dtype)], axis=-1))
        x = remat_call(blk, x, remat=self.remat)
      x = self.norm(x)
    return self.lm_head(x[:, 1:]).astype(jnp.float32)


_FIELDS = ("arch", "codebook_size", "seq_len", "num_classes", "width", "depth", "heads",
           "intermediate", "class_dropout")


def make_model(cfg: Mapping[str, Any], *, rngs: nnx.Rngs) -> OfficialMaskGIT:
  """An OfficialMaskGIT from _FIELDS and the common options (dtype, remat, scan_layers,
  attention_impl); an unknown key raises ValueError listing the valid ones."""
  return OfficialMaskGIT(**model_kwargs(cfg, _FIELDS, model="maskgit_official",
                                         cls=OfficialMaskGIT), rngs=rngs)


# `generators.bert.loss` works on this model as is.
from jaxtok.generators.bert import loss  # noqa: E402,F401  pylint: disable=g-import-not-at-top
