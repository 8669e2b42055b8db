"""ResGen over RVQ tokens: masked prediction of the sum of the masked codes (mixture-of-Gaussians
head), depth-wise masking, re-quantisation of the predicted vectors (`jaxtok.generators.resgen`).

  python tools/train.py --config configs/titok.py:tiny,quantizer=rvq --workdir runs/rvq_titok
  python tools/pretokenize.py --checkpoint runs/rvq_titok --out runs/rvq_tokens
  python tools/train_generator.py --config configs/resgen.py:tiny --data runs/rvq_tokens \
      --workdir runs/resgen --config.model.codebook=runs/rvq_tokens/codebook.npy
  python tools/sample.py --config configs/resgen.py:tiny --workdir runs/resgen \
      --config.model.codebook=runs/rvq_tokens/codebook.npy

The tokenizer is any RVQ tokenizer (`configs/titok.py:quantizer=rvq`, levels in
model.quantizer_options.num_quantizers); tools/pretokenize.py writes its code vectors to
<data>/codebook.npy, which `model.codebook` must name. The generator keeps them as its `codebook`
parameter, which never changes: it is stop-gradient'ed (Adam's update of a zero gradient is exactly
0) and excluded from weight decay (`optim.NO_DECAY_PATTERNS` matches "codebook").

arg: "size=B,tokens=64,levels=8,codebook=4096,code_dim=12,classes=1000" or "tiny" (8 tokens, 2 levels,
64 codes of dimension 12: the tiny TiTok with quantizer=rvq).
"""
import ml_collections

from jaxtok.configs import common

# width, depth, heads, mixture components.
SIZES = {"B": (768, 12, 12, 16), "L": (1024, 24, 16, 16), "tiny": (32, 2, 2, 4)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args, tiny, (width, depth, heads, mixtures) = common.generator_arg(
      arg, SIZES, keys=("tokens", "levels", "codebook", "code_dim", "classes"))
  c = common.generator_base(
      args, tiny, batch_size=256, total_steps=400_000,
      model=dict(name="resgen", num_levels=int(args.get("levels", 2 if tiny else 8)),
                 codebook_size=int(args.get("codebook", 64 if tiny else 4096)),
                 code_dim=int(args.get("code_dim", 12)),
                 seq_len=int(args.get("tokens", 8 if tiny else 64)),
                 num_classes=int(args.get("classes", 0 if tiny else 1000)),
                 width=width, depth=depth, heads=heads, mlp_ratio=4.0, num_mixtures=mixtures,
                 class_dropout=0.1, codebook="", schedule="cosine"),
      optim=dict(lr=1e-3 if tiny else 4e-4, warmup_steps=0 if tiny else 10_000, end_lr=0.0,
                 b1=0.9, b2=0.95, wd=0.05, clip=1.0),
      sampling=dict(num_steps=4 if tiny else 28, temperature=1.0, choice_temperature=1.0,
                    schedule="cosine"))
  return c
