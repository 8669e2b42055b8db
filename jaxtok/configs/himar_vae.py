"""Hi-MAR (low-resolution pivots, then masked AR of the dense tokens) over continuous VAE tokens
read as an h x w grid; MAR's sizes and recipe (`mar_vae`).

  python tools/train_generator.py --config configs/himar_vae.py:tiny --data runs/vae_tokens --workdir runs/himar
  python tools/sample.py --config configs/himar_vae.py:tiny --workdir runs/himar --steps 4

arg: "size=B,tokens=256,token_dim=16,classes=1000,grid_width=0,pivot_factor=4" or "tiny" (8 tokens
of 4 dimensions as a 2 x 4 grid, the tiny VAE's, with 1 x 2 pivots). pivot_factor 4 on 16 x 16
tokens gives the release's 4 x 4 pivots.
"""
import ml_collections

from jaxtok.configs import common, mar_vae


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args, tiny, (width, depth, heads, head_width, head_depth) = common.generator_arg(
      arg, mar_vae.SIZES, keys=("tokens", "token_dim", "classes", "grid_width", "pivot_factor"))
  c = mar_vae.get_config("tiny" if tiny else f"size={args.get('size', 'B')}")
  c.model = ml_collections.ConfigDict(dict(
      name="himar", token_dim=int(args.get("token_dim", 4 if tiny else 16)),
      seq_len=int(args.get("tokens", 8 if tiny else 256)),
      grid_width=int(args.get("grid_width", 4 if tiny else 0)),
      pivot_factor=int(args.get("pivot_factor", 2 if tiny else 4)),
      num_classes=int(args.get("classes", 0 if tiny else 1000)), width=width, depth=depth,
      heads=heads, head_width=head_width, head_depth=head_depth, class_dropout=0.1))
  c.data.path = args.get("data", "")
  return c
