"""E-CAR generator over continuous VAE tokens: stage-wise generation at doubling resolution with a
multistage flow head (jaxtok.generators.ecar, sampler jaxtok.samplers.ecar).

  python tools/train_generator.py --config configs/ecar_vae.py:tiny --data runs/vae_tokens --workdir runs/ecar

arg: "size=B,tokens=256,token_dim=16,stages=5" or "tiny" (tokens a square grid whose side is
divisible by 2^(stages-1)).
"""
import ml_collections

from jaxtok.configs import common

SIZES = {"B": (768, 12, 12, 1024, 6), "L": (1024, 16, 16, 1280, 8), "tiny": (32, 2, 2, 32, 2)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args, tiny, (width, depth, heads, head_width, head_depth) = common.generator_arg(
      arg, SIZES, keys=("tokens", "token_dim", "classes", "stages"))
  return common.generator_base(
      args, tiny, batch_size=256, total_steps=400_000,
      model=dict(name="ecar", token_dim=int(args.get("token_dim", 4 if tiny else 16)),
                 seq_len=int(args.get("tokens", 16 if tiny else 256)),
                 num_stages=int(args.get("stages", 3 if tiny else 5)),
                 num_classes=int(args.get("classes", 0 if tiny else 1000)),
                 width=width, depth=depth, heads=heads, head_width=head_width,
                 head_depth=head_depth, class_dropout=0.1),
      optim=dict(lr=1e-3 if tiny else 4e-4, warmup_steps=0 if tiny else 10_000, end_lr=0.0,
                 b1=0.9, b2=0.95, wd=0.02, clip=3.0),
      # head_steps per stage: upper at the first stage, annealed to lower at the last (DiSA's
      # linear rule over stages).
      sampling=dict(cfg_scale=1.0 if tiny else 3.0, head_steps_upper=4 if tiny else 25,
                    head_steps_lower=2 if tiny else 10, annealing="linear"))
