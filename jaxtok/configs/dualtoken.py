"""DualToken (two vocabularies: pixel ids from shallow SigLIP features, semantic ids from deep ones;
`jaxtok.tokenizers.dualtoken`).

  python tools/train.py --config configs/dualtoken.py:tiny --workdir /tmp/dualtoken_tiny

Arguments: codebook (K per vocabulary), tiny.
The full-size config is SigLIP-B/16 at 256 px (16 x 16 patches, pixel features after block 6 of 12);
the paper uses SigLIP-so400m at 384 px. The towers are random until loaded with
`tokenizers.tokenflow.with_siglip(params, path, siglip, into=("siglip", "encoder"))` (nothing is
downloaded). tiny: a random 2-block SigLIP (width 32, patch 4) at 16 px, pixel features after block
1, 4 x 4 patches, 64 codes per vocabulary: the mechanics, not the semantics.
"""
from __future__ import annotations

import ml_collections

from jaxtok.configs import common
from jaxtok.configs.tokenflow import SIGLIP_B16_256, SIGLIP_TINY, semantic_recipe, tiny_codebook


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, codebook=16384, tiny=False)
  c = common.base_config()
  c.model = ml_collections.ConfigDict(dict(
      name="dualtoken", image_size=256,
      siglip=dict(SIGLIP_B16_256), pixel_layer=6, codebook_size=a.codebook, code_dim=32, decoder_width=768, decoder_depth=8,
      decoder_heads=12, commitment_cost=0.25, semantic_loss_weight=1.0, dtype="bfloat16"))
  semantic_recipe(c)
  if a.tiny:
    common.tiny_training(c)
    c.model.update(
        image_size=16,
        siglip=dict(SIGLIP_TINY), pixel_layer=1, codebook_size=tiny_codebook(a.codebook), code_dim=8,
        decoder_width=32, decoder_depth=1, decoder_heads=2, dtype="float32")
    c.ema_decay = 0.9
  return c
