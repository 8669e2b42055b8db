"""GPSToken: images as 2D Gaussians with texture features, rendered by Gaussian splatting into a
feature map for a conv decoder (the pixel losses train everything end to end).

  python tools/train.py --config configs/gpstoken.py --workdir /tmp/gpstoken        # M-128, 256px
  python tools/train.py --config configs/gpstoken.py:tiny --workdir /tmp/gpstoken_tiny

The full config is the release's gpstoken_m128.yaml (128 Gaussians, 16 feature channels, 30 blocks
of width 512 with 8 heads, RoI 8x8, render 64x64, dmax 3, decoder ch 128 x (1, 2, 4)); `tokens=64` /
`tokens=256` give S64 / L256 (the released configs differ only in gps_num). Released weights load
through `tools/convert.py --model gpstoken` (`jaxtok.convert.gpstoken`).
"""
from __future__ import annotations

import ml_collections

from jaxtok.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, tokens=128, res=256, tiny=False)
  c = common.base_config()
  c.model = ml_collections.ConfigDict(dict(
      name="gpstoken", image_size=a.res, num_gaussians=a.tokens, feature_dim=16, min_size=8,
      split_weight=2.5, width=512, depth=30, num_heads=8, stem_channels=128, roi_size=8,
      render_size=a.res // 4, dmax=3.0, dec_ch=128, dec_ch_mult=(1, 2, 4), dec_num_res_blocks=2,
      num_groups=32, dtype="bfloat16"))
  common.l1_schedule(c, total_steps=400_000, image_size=a.res, tokens=a.tokens, tiny=a.tiny)
  if a.tiny:
    c.model.update(image_size=16, num_gaussians=8, feature_dim=4, min_size=2, width=32, depth=1,
                   num_heads=2, stem_channels=8, roi_size=2, render_size=8, dec_ch=8,
                   dec_ch_mult=(1, 2), dec_num_res_blocks=1, num_groups=4,
                   dtype="float32")
    c.eval.token_counts = [8]
    c.ema_decay = 0.9
  return c
