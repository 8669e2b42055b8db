"""GPSToken's generator (the release's SiT-XL/2-gs over GPSToken-M128 tokens, `generators.gpstoken_gen`)
on a token dataset written by tools/pretokenize.py from a GPSToken run (tokens, initial layouts,
normalisation statistics).

  python tools/pretokenize.py --checkpoint runs/gpstoken --out runs/gps_tokens
  python tools/train_generator.py --config configs/gpstoken_gen.py:tiny --data runs/gps_tokens \
      --workdir runs/gps_gen
  python tools/sample.py --config configs/gpstoken_gen.py:tiny --workdir runs/gps_gen --num_samples 8

arg: "size=XL" (the release: width 1152, depth 28, 16 heads), "size=S", "tokens=128,token_dim=21,
classes=1000", or "tiny". The release's training recipe is not published; optimizer settings are
SiT's (AdamW 1e-4, no weight decay, batch 256, EMA 0.9999). Sampling defaults are the release's run
(scripts/generate.sh): SDE, 250 steps, cfg 1.5 (guidance on t in [0.2, 1]).
"""
import ml_collections

from jaxtok.configs import common

SIZES = {"XL": (1152, 28, 16), "S": (384, 12, 6), "tiny": (32, 2, 2)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if not arg or ("size=" not in arg and "tiny" not in arg):  # the release's size by default
    arg = ",".join(a for a in (arg, "size=XL") if a)
  args, tiny, (width, depth, heads) = common.generator_arg(
      arg, SIZES, keys=("tokens", "token_dim", "classes"))
  token_dim = int(args.get("token_dim", 9 if tiny else 21))
  return common.generator_base(
      args, tiny, batch_size=256, total_steps=400_000,
      model=dict(name="gpstoken_gen", token_dim=token_dim,
                 seq_len=int(args.get("tokens", 8 if tiny else 128)),
                 num_classes=int(args.get("classes", 0 if tiny else 1000)),
                 width=width, depth=depth, heads=heads, mlp_ratio=4.0, class_dropout=0.1,
                 learn_sigma=True, stats="data" if tiny or token_dim != 21 else "released"),
      optim=dict(lr=1e-3 if tiny else 1e-4, warmup_steps=0, end_lr=1e-3 if tiny else 1e-4,
                 b1=0.9, b2=0.999, wd=0.0, clip=0.0),
      sampling=dict(num_steps=8 if tiny else 250, cfg_scale=1.5))
