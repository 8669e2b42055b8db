"""TexTok (Zha et al. 2024, "Language-Guided Image Tokenization for Generation"): a 1D tokenizer whose
encoder and decoder both read the image's caption, so the image tokens need not spend capacity on
what the text already says.

  caption ids int32 [B, Lt] (+ mask) -> frozen T5 encoder (`nn.t5`) -> text embeddings [B, Lt, Wt]
  encoder (ViT, shared Blocks): [patches (G) + positions, learned image tokens (N), Dense(text)]
     -> the N image-token outputs -> LayerNorm -> Dense -> moments [B, N, 2D]
  bottleneck: continuous, KL-regularised (`tokenizers.vae`'s Gaussian: a sample in training, the mean
     when encoding), kl_weight * KL summed over a token's dims and tokens, averaged over the batch
  decoder (ViT): [learned patch queries (G) + positions, Dense(tokens) + positions, Dense(text)]
     -> the G patch outputs -> LayerNorm -> Dense -> p x p x 3 -> images [B, S, S, 3]
Text positions that are padding are masked out of every attention (keys), in both transformers.
The compression ratio is the number of image tokens N (`num_latent_tokens`; the paper: 32 to 256).

The captions are an argument of every call: `encode(images, text_ids, text_mask)`,
`decode(tokens, text_ids, text_mask)`, `train_forward(images, *, rng, text_ids, text_mask)`. The
`tokenizers.build` facade's encode/decode pass images only, which TexTok cannot use (the tools built
on them, tools/evaluate.py and tools/tokenize_images.py, refuse text-aware tokenizers up front).
tools/train.py trains it on the bundled photographs' captions (`data.photo_captions`) or a tfds
dataset's (`data.caption_key`, `data.caption_sources`): `caption_inputs` maps captions to word ids
of `data.captions.WordVocab`, or, with `text.vocab = "spiece"`, to the ids of a SentencePiece model
such as the released T5's spiece.model (`text.sentencepiece`); the step passes the batch's
"text_ids" / "text_mask", and `encode_captioned` / `reconstruct_captioned` serve the tools. The T5
tower lives under `t5/`, stop-gradient'ed and never decayed; load released weights with
`with_t5(params, path)` (`convert.t5`; the paper uses a T5-XL encoder), random otherwise.

Differences from the paper: the paper's tokenizer also trains with perceptual and GAN losses (the
trainer's business, not the model's); sizes here are configurable, not the paper's.

Dimension names: B batch, S image size, p patch, G = (S/p)^2, N image tokens, D token dim, Lt text
length, Wt T5 width, W transformer width.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.nn import t5 as t5_lib
from jaxtok.nn.dense import Dense
from jaxtok.nn.embeddings import LearnedEmbedding
from jaxtok.nn.norm import Norm
from jaxtok.nn.options import model_kwargs
from jaxtok.nn.vit import PatchEmbed, unpatchify, vit_stack
from jaxtok.tokenizers import vae
from jaxtok.tokenizers.api import EncodeOutput, TrainOutput, check_images, check_target, compute_dtype

sg = jax.lax.stop_gradient


def sequence_mask(text_mask: jax.Array, prefix: int) -> jax.Array:
  """bool [B, 1, 1, prefix + Lt]: every non-text position is a valid key, text keys where the
  caption has a token."""
  b = text_mask.shape[0]
  return jnp.concatenate([jnp.ones((b, prefix), bool), text_mask.astype(bool)], 1)[:, None, None, :]


class TexTok(nnx.Module):
  """TexTok: (images [B, S, S, 3], caption ids [B, Lt]) -> float tokens [B, N, D] -> images."""

  def __init__(self, *, image_size: int = 256, patch_size: int = 16, num_latent_tokens: int = 64,
               token_size: int = 8, width: int = 768, depth: int = 12, num_heads: int = 12,
               t5: dict | None = None, kl_weight: float = 1e-6, dtype: Any = jnp.float32,
               remat: Any = "none", scan_layers: bool = False, attention_impl: str | None = None,
               rngs: nnx.Rngs):
    dtype = compute_dtype(dtype)
    if not isinstance(t5, Mapping):
      raise ValueError(f"t5 must be a mapping of nn.t5 fields (vocab_size, width, depth, ...), got "
                       f"{t5!r}")
    if image_size % patch_size:
      raise ValueError(f"image_size ({image_size}) must be a multiple of patch_size ({patch_size})")
    if isinstance(num_latent_tokens, bool) or not isinstance(num_latent_tokens, int) or (
        num_latent_tokens < 1):
      raise ValueError(f"num_latent_tokens must be an int >= 1, got {num_latent_tokens!r}")
    self.image_size, self.patch_size, self.num_latent_tokens = image_size, patch_size, num_latent_tokens
    self.grid, self.token_size, self.kl_weight = image_size // patch_size, token_size, float(kl_weight)
    self.dtype = dtype
    g = self.grid**2
    self.t5 = t5_lib.make_model({**dict(t5), "dtype": dtype}, rngs=rngs)
    tw = int(self.t5.embed.get_value().shape[1])
    stack = dict(dtype=dtype, remat=remat, scan_layers=scan_layers, attention_impl=attention_impl,
                 rngs=rngs)
    # encoder
    self.patch_embed = PatchEmbed(patch_size, width, dtype=dtype, rngs=rngs)
    self.patch_pos = LearnedEmbedding(g, width, rngs=rngs)
    self.latent_tokens = LearnedEmbedding(num_latent_tokens, width, rngs=rngs)
    self.enc_text = Dense(tw, width, (None, "embed"), dtype=dtype, rngs=rngs)
    self.encoder = vit_stack(width, depth, num_heads, **stack)
    self.enc_norm = Norm(width, dtype=dtype, rngs=rngs)
    self.enc_out = Dense(width, 2 * token_size, ("embed", None), dtype=dtype, rngs=rngs)
    # decoder
    self.dec_in = Dense(token_size, width, (None, "embed"), dtype=dtype, rngs=rngs)
    self.token_pos = LearnedEmbedding(num_latent_tokens, width, rngs=rngs)
    self.patch_queries = LearnedEmbedding(g, width, rngs=rngs)
    self.dec_text = Dense(tw, width, (None, "embed"), dtype=dtype, rngs=rngs)
    self.decoder = vit_stack(width, depth, num_heads, **stack)
    self.dec_norm = Norm(width, dtype=dtype, rngs=rngs)
    self.dec_out = Dense(width, patch_size * patch_size * 3, ("embed", None), dtype=dtype, rngs=rngs)

  def text_embeddings(self, text_ids: jax.Array, text_mask: jax.Array | None) -> jax.Array:
    """Frozen T5 outputs [B, Lt, Wt] float32 (stop-gradient'ed)."""
    return sg(self.t5(text_ids, text_mask))

  def _text(self, text_ids, text_mask, batch: int):
    if not hasattr(text_ids, "ndim") or text_ids.ndim != 2 or text_ids.shape[0] != batch:
      raise ValueError(f"text_ids must be int [B, Lt] with B = {batch}, got shape "
                       f"{getattr(text_ids, 'shape', None)}")
    mask = jnp.ones(text_ids.shape, bool) if text_mask is None else jnp.asarray(text_mask, bool)
    return self.text_embeddings(text_ids, mask), mask

  def moments(self, images, text_ids, text_mask=None) -> jax.Array:
    """images [B, S, S, 3] in [0, 1] + captions -> float32 [B, N, 2D] (mean, log-variance)."""
    check_images(images, self.image_size)
    b = images.shape[0]
    text, mask = self._text(text_ids, text_mask, b)
    x = self.patch_embed(images) + self.patch_pos().astype(self.dtype)
    lat = jnp.broadcast_to(self.latent_tokens().astype(self.dtype), (b,) + self.latent_tokens().shape)
    seq = jnp.concatenate([x, lat, self.enc_text(text)], axis=1)
    g, n = x.shape[1], self.num_latent_tokens
    y = self.encoder(seq, mask=sequence_mask(mask, g + n))[:, g:g + n]
    return self.enc_out(self.enc_norm(y)).astype(jnp.float32)

  def decode(self, tokens: jax.Array, text_ids: jax.Array, text_mask: jax.Array | None = None, *,
             rng: jax.Array | None = None, train: bool = False) -> jax.Array:
    """tokens float [B, N, D] + captions -> images [B, S, S, 3] float32."""
    del rng, train
    if tokens.ndim != 3 or tokens.shape[1:] != (self.num_latent_tokens, self.token_size):
      raise ValueError(f"tokens must be float [B, {self.num_latent_tokens}, {self.token_size}], got "
                       f"shape {tuple(tokens.shape)}")
    b = tokens.shape[0]
    text, mask = self._text(text_ids, text_mask, b)
    q = jnp.broadcast_to(self.patch_queries().astype(self.dtype), (b,) + self.patch_queries().shape)
    t = self.dec_in(tokens) + self.token_pos().astype(self.dtype)
    seq = jnp.concatenate([q, t, self.dec_text(text)], axis=1)
    g = q.shape[1]
    y = self.decoder(seq, mask=sequence_mask(mask, g + self.num_latent_tokens))[:, :g]
    patches = self.dec_out(self.dec_norm(y)).astype(jnp.float32)
    return unpatchify(patches, self.patch_size, self.grid, self.grid)

  def encode(self, images: jax.Array, text_ids: jax.Array, text_mask: jax.Array | None = None, *,
             rng: jax.Array | None = None, train: bool = False) -> EncodeOutput:
    """images + captions -> tokens float32 [B, N, D] (the posterior mean; a sample with `rng`)."""
    del train
    mean, logvar = vae.split_moments(self.moments(images, text_ids, text_mask))
    z = mean if rng is None else vae.sample(mean, logvar, rng)
    kl = self.kl_weight * jnp.mean(vae.kl_divergence(mean, logvar))
    return EncodeOutput(z, z, {"kl": kl}, {"logvar": jnp.mean(logvar)})

  def train_forward(self, images: jax.Array, *, rng: jax.Array, text_ids: jax.Array | None = None,
                    text_mask: jax.Array | None = None, step: int | jax.Array | None = None,
                    target: str = "pixels", perturb: Any = None, num_tokens: int | None = None
                    ) -> TrainOutput:
    """Training pass (the trainer's contract, `api.TrainOutput`): recon [B, S, S, 3] from a
    posterior sample; losses {kl}. target must be "pixels", perturb None (continuous tokens) and
    num_tokens None or N (no prefix decoding)."""
    del step
    check_target(target, proxy_head=False, model="TexTok")
    if perturb is not None:
      raise ValueError(f"TexTok's tokens are continuous: loss.perturb (RobusTok) does not apply, got "
                       f"{perturb!r}")
    self._check_num_tokens(num_tokens)
    if text_ids is None:
      raise ValueError("TexTok trains on captions: pass text_ids int32 [B, Lt] (and text_mask); with "
                       "tools/train.py the config's `text` section makes the batches carry them")
    out = self.encode(images, text_ids, text_mask, rng=rng)
    return TrainOutput(self.decode(out.tokens, text_ids, text_mask), out.losses, out.metrics)

  def _check_num_tokens(self, num_tokens) -> None:
    if num_tokens is not None and num_tokens != self.num_latent_tokens:
      raise ValueError(f"TexTok decodes all {self.num_latent_tokens} tokens (no prefix decoding), got "
                       f"num_tokens={num_tokens!r}")

  def encode_captioned(self, images: jax.Array, text: Mapping[str, jax.Array], *,
                       num_tokens: int | None = None) -> EncodeOutput:
    """`encode` with text {"text_ids": int32 [B, Lt], "text_mask": bool [B, Lt]} (`caption_inputs`)."""
    self._check_num_tokens(num_tokens)
    return self.encode(images, text["text_ids"], text.get("text_mask"))

  def reconstruct_captioned(self, images: jax.Array, text: Mapping[str, jax.Array], *,
                            num_tokens: int | None = None, rng: jax.Array | None = None) -> jax.Array:
    """decode(encode(images)) (the posterior mean) with the captions' text: [B, S, S, 3] float32."""
    del rng
    tokens = self.encode_captioned(images, text, num_tokens=num_tokens).tokens
    return self.decode(tokens, text["text_ids"], text.get("text_mask"))


TEXT_VOCABS = ("words", "spiece")


def caption_inputs(text_cfg: Mapping[str, Any], captions: list[str]) -> dict[str, Any]:
  """{"text_ids": int32 [N, L], "text_mask": bool [N, L]} of captions, per a config's `text` section
  {"vocab": "words" (`data.captions.WordVocab`, the bundled word list) or "spiece" (the SentencePiece
  model file at `text.spiece`, e.g. the released T5's spiece.model: pieces then </s>, pad 0, as T5
  reads text; `text.sentencepiece`), "length": L}."""
  from jaxtok.data import captions as captions_lib  # pylint: disable=g-import-not-at-top
  get = text_cfg.get if hasattr(text_cfg, "get") else (lambda k, d=None: d)
  vocab, length = get("vocab", None), get("length", None)
  if vocab not in TEXT_VOCABS:
    raise ValueError(f"config.text.vocab must be one of {TEXT_VOCABS} for TexTok, got {vocab!r}")
  if vocab == "spiece":
    from jaxtok.text import sentencepiece  # pylint: disable=g-import-not-at-top
    path = get("spiece", None)
    if not path:
      raise ValueError("config.text.vocab 'spiece' needs config.text.spiece: the path of the T5 "
                       f"SentencePiece model (spiece.model), got {path!r}")
    ids, mask = sentencepiece.load(path).ids(list(captions), length)
  else:
    ids, mask = captions_lib.WordVocab().encode(list(captions), length)
  return {"text_ids": ids, "text_mask": mask}


_FIELDS = ("image_size", "patch_size", "num_latent_tokens", "token_size", "width", "depth", "num_heads",
           "t5", "kl_weight")


def make_model(cfg: Mapping[str, Any], *, rngs: nnx.Rngs) -> TexTok:
  """A TexTok from _FIELDS and the common options; an unknown key raises ValueError."""
  cfg = dict(cfg.to_dict()) if hasattr(cfg, "to_dict") else dict(cfg)
  kwargs = model_kwargs(cfg, _FIELDS, model="TexTok", cls=TexTok)
  if "t5" in kwargs:
    kwargs["t5"] = dict(kwargs["t5"])
  return TexTok(**kwargs, rngs=rngs)


def with_t5(params: nnx.State, path: str) -> nnx.State:
  """`params` with the `t5` subtree replaced by the encoder of the HF T5 file `path` (its shapes must
  match the model's `t5` config: a mismatch is refused naming the tensors)."""
  from jaxtok.convert import common  # pylint: disable=g-import-not-at-top
  from jaxtok.convert import t5 as convert_t5  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  if not os.path.exists(os.fspath(path)):
    raise ValueError(f"T5 weights {os.fspath(path)!r} do not exist; expected {convert_t5.WEIGHTS_HELP}")
  flat, _ = common.read_checkpoint(path)
  heads = int(params["t5"]["relative_bias"].get_value().shape[1])
  loaded = common.fill_state(params["t5"], convert_t5.convert(flat, heads), source=os.fspath(path))
  out = jax.tree.map(lambda x: x, params)
  out["t5"] = loaded
  return out
