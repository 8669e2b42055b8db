"""NAR (next-neighbour AR) generator over a 2D VQGAN token grid (16 x 16 tokens of 1024 codes).

  python tools/train_generator.py --config configs/nar_vqgan.py:tiny --data runs/vqgan_tokens --workdir runs/nar
  python tools/sample.py --config configs/nar_vqgan.py:tiny --workdir runs/nar

arg: "size=B,tokens=256,grid_width=0,codebook=1024,classes=1000" or "tiny" (8 tokens as a 2 x 4 grid:
5 model calls per sample). grid_width 0 = square grid. The recipe and sampling defaults are the
GPT's (`gpt_flextok.ar_config`).
"""
import ml_collections

from jaxtok.configs import common, gpt_flextok


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args, tiny, (width, depth, heads) = common.generator_arg(
      arg, gpt_flextok.SIZES, keys=("tokens", "codebook", "classes", "grid_width"))
  return gpt_flextok.ar_config(args, tiny, dict(
      name="nar", codebook_size=int(args.get("codebook", 16 if tiny else 1024)),
      seq_len=int(args.get("tokens", 8 if tiny else 256)),
      grid_width=int(args.get("grid_width", 4 if tiny else 0)),
      num_classes=int(args.get("classes", 0 if tiny else 1000)),
      width=width, depth=depth, heads=heads, class_dropout=0.1, rope="2d"))
