"""D-AR tokenizer (jaxtok.tokenizers.dar): 1D tokens in groups, each conditioning one segment of a
pixel-space flow decoder; train a GPT (configs/gpt_flextok.py style) on its tokens afterwards.

  python tools/train.py --config configs/dar.py:tokens=256,groups=8 --workdir /tmp/dar
  python tools/train.py --config configs/dar.py:tiny --workdir /tmp/dar_tiny

The flow loss comes from the model's train_forward (no pixel losses: the decoder samples).
"""
from __future__ import annotations

import ml_collections

from jaxtok.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, tokens=256, groups=8, steps=25, res=256, tiny=False)
  c = common.base_config()
  c.model = ml_collections.ConfigDict(dict(
      name="dar", image_size=a.res, patch_size=16, enc_width=768, enc_depth=12, token_width=768,
      token_depth=4, dec_width=768, dec_depth=12, head_dim=64, num_tokens=a.tokens,
      num_groups=a.groups, num_steps=a.steps, fsq_levels=(8, 8, 8, 5, 5, 5), time_shift=1.0))
  c.total_steps = 400_000
  c.data.image_size = a.res
  c.data.batch_size = 256
  c.optim.update(lr=1e-4, warmup_steps=10_000, end_lr=1e-5, b1=0.9, b2=0.99, wd=0.05)
  c.loss.update(l1=0.0, l2=0.0)  # the flow loss is in train_forward's losses.
  group = a.tokens // a.groups
  c.eval.token_counts = sorted({group, a.tokens})   # the first group's preview and all tokens
  if a.tiny:
    common.tiny_training(c)
    c.model.update(image_size=16, patch_size=4, enc_width=32, enc_depth=1, token_width=32,
                   token_depth=1, dec_width=32, dec_depth=1, head_dim=16, num_tokens=8,
                   num_groups=4, num_steps=8, fsq_levels=(8, 5, 5))
    c.eval.token_counts = [2, 8]
    c.ema_decay = 0.9
  return c
