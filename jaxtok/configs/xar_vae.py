"""xAR (next-X prediction by flow matching) over continuous VAE tokens read as an h x w grid.

  python tools/train_generator.py --config configs/xar_vae.py:tiny,entity=cell --data runs/vae_tokens --workdir runs/xar
  python tools/sample.py --config configs/xar_vae.py:tiny,entity=cell --workdir runs/xar --steps 8

arg: "size=B,tokens=256,token_dim=16,classes=1000,grid_width=0,entity=cell,entity_size=8" or
"tiny" (8 tokens of 4 dimensions as a 2 x 4 grid, the tiny VAE's; 2 x 2 cells). entity: token |
cell | subsample | scale | image (`jaxtok.generators.entities`); entity_size: the cell side / the
stride (cell, subsample) or the number of scales (scale, 0 = all). B/L/H are the release's xAR-B/L/H widths with
its encoder and decoder depths added (8 + 8, 16 + 16, 20 + 20); its recipe: batch 2048, 800 epochs,
lr 5e-5 x batch / 256 with 100 warm-up epochs, 2 x 2 cells of 8 x 8 tokens on a 16 x 16 grid,
sampling with 40 (B) / 50 (L) flow steps per entity and guidance rising linearly over entities,
by the release's SDE sampler (flow_method "sde"; tiny keeps the ODE's Euler). The model rotates
queries and keys by 2D RoPE on the grid as released (model.rope "2d"; "none" = learned positions
only).
"""
import ml_collections

from jaxtok.configs import common

SIZES = {"B": (768, 16, 12), "L": (1024, 32, 16), "H": (1280, 40, 16), "tiny": (32, 2, 2)}
ENTITY_DEFAULT = "cell"


def split_entity(arg: str | None) -> tuple[str | None, str]:
  """(arg without its `entity=` part, the entity kind): the one string-valued argument, which
  `common.generator_arg` (integer counts) does not take."""
  parts = [p for p in (arg or "").split(",") if p.strip()]
  kinds = [p.partition("=")[2].strip() for p in parts if p.strip().startswith("entity=")]
  rest = [p for p in parts if not p.strip().startswith("entity=")]
  return ",".join(rest) or None, (kinds[-1] if kinds else ENTITY_DEFAULT)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg, entity = split_entity(arg)
  args, tiny, (width, depth, heads) = common.generator_arg(
      arg, SIZES, keys=("tokens", "token_dim", "classes", "grid_width", "entity_size"))
  return common.generator_base(
      args, tiny, batch_size=2048, total_steps=500_000,
      model=dict(name="xar", token_dim=int(args.get("token_dim", 4 if tiny else 16)),
                 seq_len=int(args.get("tokens", 8 if tiny else 256)),
                 grid_width=int(args.get("grid_width", 4 if tiny else 0)), entity=entity,
                 entity_size=int(args.get("entity_size", 2 if tiny else 8)),
                 num_classes=int(args.get("classes", 0 if tiny else 1000)),
                 width=width, depth=depth, heads=heads, mlp_ratio=4.0, class_dropout=0.1,
                 noisy_context=True, rope="2d"),
      optim=dict(lr=1e-3 if tiny else 4e-4, warmup_steps=0 if tiny else 62_500, end_lr=0.0,
                 b1=0.9, b2=0.95, wd=0.02, clip=3.0),
      sampling=dict(num_steps=4 if tiny else 40, cfg_scale=1.0 if tiny else 2.7,
                    cfg_schedule="linear", flow_method="euler" if tiny else "sde"))
