"""MAR generator over continuous VAE tokens (jaxtok's 1D VAE tokenizer), with a rectified-flow head
and diffusion step annealing (DiSA) at sampling.

  python tools/train_generator.py --config configs/mar_vae.py:tiny --data runs/vae_tokens --workdir runs/mar

arg: "size=B,tokens=64,token_dim=16" or "tiny".
"""
import ml_collections

from jaxtok.configs import common

SIZES = {"B": (768, 12, 12, 1024, 6), "L": (1024, 16, 16, 1280, 8), "tiny": (32, 2, 2, 32, 2)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args, tiny, (width, depth, heads, head_width, head_depth) = common.generator_arg(arg, SIZES, keys=("tokens", "token_dim", "classes"))
  c = common.generator_base(
      args, tiny, batch_size=2048, total_steps=400_000,
      model=dict(name="mar", token_dim=int(args.get("token_dim", 4 if tiny else 16)),
                 seq_len=int(args.get("tokens", 8 if tiny else 64)),
                 num_classes=int(args.get("classes", 0 if tiny else 1000)),
                 width=width, depth=depth, heads=heads, head_width=head_width,
                 head_depth=head_depth, class_dropout=0.1),
      optim=dict(lr=1e-3 if tiny else 8e-4, warmup_steps=0 if tiny else 10_000, end_lr=0.0,
                 b1=0.9, b2=0.95, wd=0.02, clip=3.0),
      sampling=dict(num_iters=4 if tiny else 64, cfg_scale=1.0 if tiny else 3.0,
                    head_steps_upper=8 if tiny else 50, head_steps_lower=2 if tiny else 5,
                    annealing="linear"))
  return c
