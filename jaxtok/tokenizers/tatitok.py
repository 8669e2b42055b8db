"""TA-TiTok: text-aware TiTok (Kim et al. 2025, "Democratizing Text-to-Image Masked Generative
Models with Compact Text-Aware One-Dimensional Tokens", arXiv 2501.07730).

A TiTok (`tokenizers.titok`: same encoder, VQ or VAE bottleneck, single-stage pixel decoder) whose
decoder also reads the caption: the CLIP text features of the image's caption (ln_final output of
the CLIP text tower, [B, S, C] with S = 77 and C = 768 for OpenAI ViT-L/14-336, `nn.clip_text`
"tokens") are projected and joined to the decoder's sequence after the latent tokens:

  text = text_guidance_proj(text_features) + text_guidance_positional_embedding     [B, S, W]
  decoder sequence = ln_pre([cls, mask x G, latents + positions, text])

(bytedance/1d-tokenizer modeling/modules/blocks.py `TATiTokDecoder`, checked at its HEAD). The
encoder never sees the text; the text tokens are keys for every decoder position (and are never
masked by tail drop). S must equal text_context_length, because the positional table is added
whole, as the official does.

Contract: `encode(images)` as TiTok; `decode(tokens, text_features)`; `train_forward(images, *, rng,
text_features, ...)`, the step passing the batch's "text_features" (`train.step`). The Tokenizer
facade's `decode`/`reconstruct` have no text argument: use `decode_fn` / the module itself. The
training tools read captions through `caption_inputs` (captions -> {"text_features"} with the
config's frozen CLIP tower) and `encode_captioned` / `reconstruct_captioned` (the text-aware
tokenizers' common interface, `data.photo_captions`).

Dimension names: B batch, K' tokens, S text length, C text feature width, W decoder width.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.nn.dense import Dense
from jaxtok.nn.embeddings import LearnedEmbedding
from jaxtok.tokenizers import titok
from jaxtok.tokenizers.api import TrainOutput


class TATiTok(titok.TiTok):
  """TiTok whose decoder appends projected text features (module docstring).

  Args:
    text_context_length: S, rows of the text positional table (77 for CLIP).
    text_embed_dim: C, the text feature width (768 for CLIP ViT-L/14).
    **kwargs: the TiTok fields (`tokenizers.titok.TiTok`).
  """

  def __init__(self, *, text_context_length: int = 77, text_embed_dim: int = 768, **kwargs: Any):
    for name, v in (("text_context_length", text_context_length), ("text_embed_dim", text_embed_dim)):
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"TA-TiTok {name} must be an int >= 1, got {v!r}")
    super().__init__(**kwargs)
    rngs = kwargs["rngs"]
    self.text_context_length, self.text_embed_dim = text_context_length, text_embed_dim
    width = self.decoder.width
    # On the decoder, under the official parameter names (decoder.text_guidance_*).
    self.decoder.text_guidance_proj = Dense(text_embed_dim, width, (None, "embed"), dtype=self.dtype,
                                            rngs=rngs)
    self.decoder.text_guidance_positional_embedding = LearnedEmbedding(text_context_length, width,
                                                                       rngs=rngs)

  def text_context(self, text_features: jax.Array) -> jax.Array:
    """text_features float [B, S, C] -> the decoder's text tokens [B, S, W] in the compute dtype."""
    shape = (self.text_context_length, self.text_embed_dim)
    if (not hasattr(text_features, "shape") or text_features.ndim != 3
        or tuple(text_features.shape[1:]) != shape):
      raise ValueError(f"text_features must be float [B, {shape[0]}, {shape[1]}] "
                       f"(text_context_length, text_embed_dim), got "
                       f"{getattr(text_features, 'shape', type(text_features).__name__)}")
    if not jnp.issubdtype(text_features.dtype, jnp.floating):
      raise TypeError(f"text_features must be floating, got {text_features.dtype}")
    dec = self.decoder
    return (dec.text_guidance_proj(text_features.astype(jnp.float32))
            + dec.text_guidance_positional_embedding().astype(self.dtype))

  def _batch_text(self, text_features, batch: int) -> jax.Array:
    if text_features is None:
      raise ValueError("TA-TiTok decodes with the caption's text features: pass text_features "
                       f"[B, {self.text_context_length}, {self.text_embed_dim}] (nn.clip_text "
                       "'tokens')")
    context = self.text_context(text_features)
    if context.shape[0] != batch:
      raise ValueError(f"text_features must have the tokens' batch size {batch}, got "
                       f"{context.shape[0]}")
    return context

  def decode(self, tokens: jax.Array, text_features: jax.Array | None = None, *,
             rng: jax.Array | None = None, train: bool = False,
             num_tokens: int | jax.Array | None = None) -> jax.Array:
    """Tokens int32 [B, K'] (or float [B, K', D] for the VAE) and text_features [B, S, C] -> images
    float32 [B, H, W, 3]."""
    del rng, train
    self._check_tokens(tokens)
    context = self._batch_text(text_features, tokens.shape[0])
    return self.decode_codes(self.tokens_to_codes(tokens), num_tokens=num_tokens, context=context)

  def encode_captioned(self, images: jax.Array, text: Mapping[str, jax.Array], *,
                       num_tokens: int | None = None):
    """`encode` (the encoder never reads the caption; `text` is accepted for the common interface)."""
    del text
    return self.encode(images, num_tokens=num_tokens)

  def reconstruct_captioned(self, images: jax.Array, text: Mapping[str, jax.Array], *,
                            num_tokens: int | None = None, rng: jax.Array | None = None) -> jax.Array:
    """images [B, H, W, 3] + text {"text_features": [B, S, C]} -> images float32 [B, H, W, 3]
    decoded from the first num_tokens tokens."""
    del rng
    tokens = self.encode(images, num_tokens=num_tokens).tokens
    return self.decode(tokens, text["text_features"])

  def decode_logits(self, tokens, *, num_tokens=None):
    raise ValueError("TA-TiTok has no proxy-code head (single-stage pixel decoder)")

  def train_forward(self, images: jax.Array, *, rng: jax.Array, text_features: jax.Array | None = None,
                    **kwargs: Any) -> TrainOutput:
    """TiTok's training pass (`TiTok.train_forward`'s keywords) with the decoder reading
    text_features [B, S, C] of the images' captions."""
    return super().train_forward(images, rng=rng,
                                 context=self._batch_text(text_features, images.shape[0]), **kwargs)


_TEXT_FIELDS = ("text_context_length", "text_embed_dim")


def make_model(cfg: Mapping[str, Any], *, rngs: nnx.Rngs) -> TATiTok:
  """A TA-TiTok from the TiTok fields (`tokenizers.titok.make_model`) plus text_context_length and
  text_embed_dim; quantizer "vq" or "vae". Unknown keys raise ValueError naming the valid ones."""
  kwargs = titok.titok_kwargs(cfg, fields=titok._FIELDS + _TEXT_FIELDS, cls=TATiTok,
                              model="TA-TiTok")
  if kwargs.get("decoder_head", "pixels") != "pixels":
    raise ValueError(f"TA-TiTok decodes pixels (single-stage), got decoder_head "
                     f"{kwargs['decoder_head']!r}")
  return TATiTok(**kwargs, rngs=rngs)


def caption_features(text_cfg: Mapping[str, Any], captions: list[str]) -> dict[str, Any]:
  """The frozen CLIP text tower's outputs {"tokens", "penultimate" [N, S, C], "pooled" [N, D]}
  float32 of captions, the tower being the one `text_cfg` (a config's `text` section,
  `text.encoder.from_config`) names (what MaskGen conditions on, `data.tokens` captions)."""
  from jaxtok.text import encoder as encoder_lib  # pylint: disable=g-import-not-at-top
  return encoder_lib.from_config(text_cfg)(list(captions))


def caption_inputs(text_cfg: Mapping[str, Any], captions: list[str]) -> dict[str, Any]:
  """{"text_features": float32 [N, S, C]}: the "tokens" features of each caption
  (`caption_features`), what the decoder reads."""
  return {"text_features": caption_features(text_cfg, captions)["tokens"]}


def decode_fn(tokenizer):
  """A jitted fn(params, tokens, text_features) -> images [B, H, W, 3] float32 for a Tokenizer
  built from a TA-TiTok config (the facade's `decode` takes no arrays besides the tokens)."""
  graphdef = tokenizer.graphdef

  @jax.jit
  def fn(params, tokens, text_features):
    return nnx.merge(graphdef, params).decode(tokens, text_features)

  return fn
