"""GPT-style AR generator over FlexTok's ordered 1D tokens (FSQ 8,8,8,5,5,5 -> 64,000 codes).

  python tools/pretokenize.py --config configs/flextok.py:tiny --workdir runs/flextok --out runs/flextok_tokens
  python tools/train_generator.py --config configs/gpt_flextok.py:tiny --data runs/flextok_tokens --workdir runs/gpt

arg: "size=B" (B: 12 layers x 768, L: 24 x 1024) or "tiny" (CPU seconds).
"""
import ml_collections

from jaxtok.configs import common

SIZES = {"B": (768, 12, 12), "L": (1024, 24, 16), "tiny": (32, 2, 2)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args, tiny, (width, depth, heads) = common.generator_arg(arg, SIZES)
  return ar_config(args, tiny, dict(
      name="gpt", codebook_size=int(args.get("codebook", 16 if tiny else 64000)),
      seq_len=int(args.get("tokens", 8 if tiny else 256)),
      num_classes=int(args.get("classes", 0 if tiny else 1000)),
      width=width, depth=depth, heads=heads, class_dropout=0.1))


def ar_config(args: dict, tiny: bool, model: dict) -> ml_collections.ConfigDict:
  """The AR training recipe (AdamW b2 0.95, wd 0.05, LlamaGen-style) and sampling defaults around a
  `model` dict; shared by the GPT, Token-Shuffle and NAR configs."""
  return common.generator_base(
      args, tiny, batch_size=256, total_steps=300_000, model=model,
      optim=dict(lr=1e-3 if tiny else 4e-4, warmup_steps=0 if tiny else 5000, end_lr=0.0, b1=0.9,
                 b2=0.95, wd=0.05, clip=1.0),
      sampling=dict(temperature=1.0, top_k=0, top_p=1.0, cfg_scale=1.0 if tiny else 4.0,
                    cfg_schedule="constant"))
