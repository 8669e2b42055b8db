"""GPT-style AR generator over D-AR's ordered 1D tokens (jaxtok.tokenizers.dar; D-AR trains a
Llama on them, next-token over K tokens whose groups unlock successive segments of its decoder's
trajectory). The codebook and token count follow configs/dar.py (FSQ levels: their product; tiny:
8 x 5 x 5 = 200 codes, 8 tokens in 4 groups; full: 64,000 codes, 256 tokens).

  python tools/train.py --config configs/dar.py:tiny --workdir runs/dar
  python tools/pretokenize.py --checkpoint runs/dar --out runs/dar_tokens
  python tools/train_generator.py --config configs/gpt_dar.py:tiny --data runs/dar_tokens --workdir runs/gpt_dar
  python tools/sample.py --config configs/gpt_dar.py:tiny --workdir runs/gpt_dar --previews

arg: "size=B" (12 x 768), "size=L" (24 x 1024) or "tiny"; tokens / codebook override D-AR's.
"""
import math

import ml_collections

from jaxtok.configs import common, dar, gpt_flextok


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args, tiny, (width, depth, heads) = common.generator_arg(arg, gpt_flextok.SIZES)
  tok = dar.get_config("tiny" if tiny else None).model
  return gpt_flextok.ar_config(args, tiny, dict(
      name="gpt", codebook_size=int(args.get("codebook", math.prod(tok.fsq_levels))),
      seq_len=int(args.get("tokens", tok.num_tokens)),
      num_classes=int(args.get("classes", 0 if tiny else 1000)),
      width=width, depth=depth, heads=heads, class_dropout=0.1))
