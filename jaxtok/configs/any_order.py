"""Any-subset AR generator (sigma-GPT style AS-ARM, `jaxtok.generators.any_order`) over 1D tokens,
trained on uniformly random orders; sampled in parallel with ASSD (`jaxtok.samplers.assd`).

  python tools/train_generator.py --config configs/any_order.py:tiny --data runs/titok_tokens --workdir runs/any_order

arg: "size=B,tokens=32,codebook=4096,classes=1000" or "tiny" (8 tokens of 16 codes, CPU seconds).
The recipe is the GPT's (`gpt_flextok.ar_config`).
"""
import ml_collections

from jaxtok.configs import common, gpt_flextok


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args, tiny, (width, depth, heads) = common.generator_arg(arg, gpt_flextok.SIZES)
  return gpt_flextok.ar_config(args, tiny, dict(
      name="any_order", codebook_size=int(args.get("codebook", 16 if tiny else 4096)),
      seq_len=int(args.get("tokens", 8 if tiny else 32)),
      num_classes=int(args.get("classes", 0 if tiny else 1000)),
      width=width, depth=depth, heads=heads, class_dropout=0.1))
