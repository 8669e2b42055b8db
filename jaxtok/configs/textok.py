"""TexTok (text-conditioned 1D tokenizer; `jaxtok.tokenizers.textok`).

  python tools/train.py --config configs/textok.py:tiny --workdir runs/textok

tools/train.py trains it on the bundled photographs and their captions (`data.photo_captions`): the
`text` section says how a caption becomes the model's text inputs, {"vocab": "words", "length": L}
(`data.captions.WordVocab` ids, cut / padded to L, with their mask), and each batch carries the
crops' "text_ids" / "text_mask". Released T5 weights (`tokenizers.textok.with_t5`) read the ids of
their SentencePiece model: `spiece=/path/spiece.model` sets {"vocab": "spiece", "spiece": path}
(`text.sentencepiece`: pieces then </s>, pad 0), and the tiny T5's vocabulary becomes that model's
(its captions then up to 24 ids). tools/evaluate.py and tools/tokenize_images.py refuse TexTok
(their images carry no captions); the training run's final_metrics.json scores the captioned
held-out crops.

Arguments: tokens (N image tokens: the compression ratio; the paper sweeps 32 to 256), tiny, spiece
(a SentencePiece model file; the full size refuses one with more pieces than the T5 vocabulary).
Full size: 256 px, patch 16, ViT-B encoder and decoder, 8-dim KL tokens, a T5-base-shaped encoder
(random until `tokenizers.textok.with_t5` loads released weights; the paper uses T5-XL).
tiny: 16 px, patch 4, 4 tokens, width 32, 1 block, a random 1-block T5 over `data.captions.WordVocab`.
"""
from __future__ import annotations

import ml_collections

from jaxtok.configs import common

T5_BASE = dict(vocab_size=32128, width=768, depth=12, num_heads=12, head_dim=64, mlp_hidden=2048,
               mlp="geglu")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, tokens=64, tiny=False, spiece="")
  c = common.base_config()
  c.model = ml_collections.ConfigDict(dict(
      name="textok", image_size=256, patch_size=16, num_latent_tokens=a.tokens, token_size=8,
      width=768, depth=12, num_heads=12, t5=dict(T5_BASE), kl_weight=1e-6, dtype="bfloat16"))
  c.data.image_size = 256
  c.text = ml_collections.ConfigDict(dict(vocab="words", length=32))
  if a.tiny:
    from jaxtok.data import captions  # pylint: disable=g-import-not-at-top
    common.tiny_training(c)
    c.model.update(image_size=16, patch_size=4, num_latent_tokens=4 if a.tokens == 64 else a.tokens,
                   token_size=4, width=32, depth=1, num_heads=2, dtype="float32",
                   t5=dict(vocab_size=len(captions.WordVocab()), width=16, depth=1, num_heads=2,
                           head_dim=8, mlp_hidden=32, mlp="geglu"))
    c.text.length = 12  # the longest bundled caption: 9 words + <bos> + <eos>
  if a.spiece:
    from jaxtok.text import sentencepiece  # pylint: disable=g-import-not-at-top
    size = len(sentencepiece.load(a.spiece))  # a missing or broken file is refused here
    c.text.update(vocab="spiece", spiece=a.spiece)
    if a.tiny:
      c.model.t5.vocab_size = size
      c.text.length = 24  # subword pieces: a caption takes more ids than words
    elif size > c.model.t5.vocab_size:
      raise ValueError(f"spiece={a.spiece!r} has {size} pieces, more than the T5 vocabulary "
                       f"({c.model.t5.vocab_size})")
  return c
