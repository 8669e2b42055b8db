"""RAR (randomized autoregressive) generator over MaskGIT-VQGAN tokens (256 tokens, 1024 codes), with
the released recipe (1d-tokenizer configs/training/generator/rar.yaml): AdamW 4e-4, betas (0.9,
0.96), wd 0.03, 62.5k warmup steps of 250k, batch 2048, no EMA, class dropout 0.1, dropout 0.1
(attention output and MLP) and 0.1 on the attention probabilities, the random-order chance annealed
from 1 to 0 between steps 125k and 187.5k; sampling in raster order with the power-cosine guidance
schedule and each size's released temperature / scale / power.

  python tools/train_generator.py --config configs/rar.py:tiny --data runs/tokens --workdir runs/rar

arg: "size=B" (B 768 x 24, L 1024 x 24, XL 1280 x 32, XXL 1408 x 40; 16 heads, MLP 4 W), with
"tokens=", "codebook=", "classes=" overrides, or "tiny" (CPU seconds: width 32, 2 layers, 8 tokens
of 16 codes, the anneal over steps 1..3 of 4).
"""
import ml_collections

from jaxtok.configs import common

SIZES = {"B": (768, 24, 16), "L": (1024, 24, 16), "XL": (1280, 32, 16), "XXL": (1408, 40, 16),
         "tiny": (32, 2, 2)}
# README_RAR.md's sampling settings per size: (temperature, guidance scale, power of the schedule).
SAMPLING = {"B": (1.0, 16.0, 2.75), "L": (1.02, 15.5, 2.5), "XL": (1.02, 6.9, 1.5),
            "XXL": (1.02, 8.0, 1.2), "tiny": (1.0, 1.0, 1.0)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args, tiny, (width, depth, heads) = common.generator_arg(arg, SIZES)
  temperature, scale, power = SAMPLING["tiny" if tiny else args.get("size", "B")]
  c = common.generator_base(
      args, tiny, batch_size=2048, total_steps=250_000,
      model=dict(name="rar", codebook_size=int(args.get("codebook", 16 if tiny else 1024)),
                 seq_len=int(args.get("tokens", 8 if tiny else 256)),
                 num_classes=int(args.get("classes", 2 if tiny else 1000)), width=width,
                 depth=depth, heads=heads, mlp_ratio=4.0, class_dropout=0.1,
                 anneal_start=1 if tiny else 125_000, anneal_end=3 if tiny else 187_500,
                 # the release's training dropout (configs/training/generator/rar.yaml); the tiny
                 # smoke config trains without it
                 dropout=0.0 if tiny else 0.1, attn_dropout=0.0 if tiny else 0.1),
      optim=dict(lr=1e-3 if tiny else 4e-4, warmup_steps=0 if tiny else 62_500, end_lr=1e-5,
                 b1=0.9, b2=0.96, wd=0.03, clip=1.0),
      sampling=dict(temperature=temperature, top_k=0, top_p=1.0, cfg_scale=scale,
                    cfg_schedule="power-cosine", cfg_power=power))
  c.ema_decay = 0.0  # the release trains without EMA
  return c
