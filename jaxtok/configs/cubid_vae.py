"""CubiD generator: masked discrete diffusion over every (position, dimension) element of float
tokens quantized dimension-wise on the fly (2**bits levels per dimension).

  python tools/train_generator.py --config configs/cubid_vae.py:tiny --data runs/vae_tokens --workdir runs/cubid
  python tools/sample.py --config configs/cubid_vae.py:tiny --workdir runs/cubid --steps 8

arg: "size=B,tokens=64,token_dim=16,classes=1000,bits=4" or "tiny".
"""
import ml_collections

from jaxtok.configs import common

SIZES = {"B": (768, 12, 12), "L": (1024, 24, 16), "tiny": (32, 2, 2)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args, tiny, (width, depth, heads) = common.generator_arg(
      arg, SIZES, keys=("tokens", "token_dim", "classes", "bits"))
  return common.generator_base(
      args, tiny, batch_size=1024, total_steps=400_000,
      model=dict(name="cubid", token_dim=int(args.get("token_dim", 4 if tiny else 16)),
                 seq_len=int(args.get("tokens", 8 if tiny else 64)),
                 num_classes=int(args.get("classes", 0 if tiny else 1000)),
                 width=width, depth=depth, heads=heads, bits=int(args.get("bits", 3 if tiny else 4)),
                 std_range=3.0, value_range=5.0, class_dropout=0.1),
      optim=dict(lr=1e-3 if tiny else 4e-4, warmup_steps=0 if tiny else 10_000, end_lr=0.0,
                 b1=0.9, b2=0.95, wd=0.02, clip=3.0),
      sampling=dict(num_steps=4 if tiny else 64, schedule="cosine", cfg_scale=1.0 if tiny else 3.0,
                    choice_temperature=4.5, temperature=1.0))
