"""Instella-T2I's autoregressive generator over the bits of a 1D binary tokenizer
(configs/instella.py): each token's bits are independent Bernoullis given the earlier tokens
(`jaxtok.generators.binary_ar`), sampled with the trunk's KV cache.

  python tools/train_generator.py --config configs/binary_ar.py:tiny --data runs/bits --workdir runs/bar
  python tools/sample.py --config configs/binary_ar.py:tiny --workdir runs/bar

arg: "size=B,tokens=128,bits=64,classes=1000" or "tiny" (8 tokens of 32 bits, unconditional).
"""
import ml_collections

from jaxtok.configs import common

# width, depth, heads.
SIZES = {"B": (768, 12, 12), "L": (1024, 24, 16), "tiny": (32, 2, 2)}


def bit_generator_config(arg: str | None, name: str, *, steps: int | None = None
                         ) -> ml_collections.ConfigDict:
  """The config shared by the two bit generators (`name`: binary_ar | binary_diffusion)."""
  args, tiny, (width, depth, heads) = common.generator_arg(arg, SIZES, keys=("tokens", "bits", "classes"))
  sampling = dict(temperature=1.0, cfg_scale=1.0)
  if steps is not None:  # the diffusion sampler: steps and the release's protocol (1 | 2)
    sampling.update(num_steps=8 if tiny else steps, protocol=1)
  else:  # the AR sampler: the release's within-token bit bias (0 = independent bits)
    sampling.update(bit_delta=0.0)
  return common.generator_base(
      args, tiny, batch_size=256, total_steps=400_000,
      model=dict(name=name, num_bits=int(args.get("bits", 32 if tiny else 64)),
                 seq_len=int(args.get("tokens", 8 if tiny else 128)),
                 num_classes=int(args.get("classes", 0 if tiny else 1000)),
                 width=width, depth=depth, heads=heads, mlp_ratio=4.0, class_dropout=0.1),
      optim=dict(lr=1e-3 if tiny else 1e-4, warmup_steps=0 if tiny else 5_000, end_lr=0.0,
                 b1=0.9, b2=0.95, wd=0.0, clip=1.0),
      sampling=sampling)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return bit_generator_config(arg, "binary_ar")
