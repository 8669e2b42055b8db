"""MaskGIT generator over TiTok's 1D tokens (as 1d-tokenizer's TiTok generator: arccos masking,
label smoothing 0.1, class dropout 0.1; sampling 8 steps, guidance 3.0, temperature 4.5).

  python tools/train_generator.py --config configs/maskgit_titok.py:tiny --data runs/titok_tokens --workdir runs/maskgit

arg: "size=B,tokens=64,codebook=4096" or "tiny".
"""
import ml_collections

from jaxtok.configs import common

SIZES = {"B": (768, 24, 16), "S": (512, 12, 8), "tiny": (32, 2, 2)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args, tiny, (width, depth, heads) = common.generator_arg(arg, SIZES)
  c = common.generator_base(
      args, tiny, batch_size=2048, total_steps=500_000,
      model=dict(name="maskgit", codebook_size=int(args.get("codebook", 16 if tiny else 4096)),
                 seq_len=int(args.get("tokens", 8 if tiny else 64)),
                 num_classes=int(args.get("classes", 0 if tiny else 1000)),
                 width=width, depth=depth, heads=heads, class_dropout=0.1),
      optim=dict(lr=1e-3 if tiny else 2e-4, warmup_steps=0 if tiny else 10_000, end_lr=1e-5,
                 b1=0.9, b2=0.96, wd=0.03, clip=1.0),
      sampling=dict(num_steps=4 if tiny else 8, cfg_scale=1.0 if tiny else 3.0,
                    choice_temperature=4.5, schedule="arccos"))
  return c
