"""MaskGIT generator over TiTok's 1D tokens (as 1d-tokenizer's TiTok generator: arccos masking,
label smoothing 0.1, class dropout 0.1). Full-size sampling is the released procedure (mode "titok")
with the released settings for the token count (32/64/128: titok_l32/b64/s128, otherwise the demo's);
tiny samples with google-research/maskgit's procedure.

  python tools/train_generator.py --config configs/maskgit_titok.py:tiny --data runs/titok_tokens --workdir runs/maskgit

arg: "size=B,tokens=64,codebook=4096" or "tiny".
"""
import ml_collections

from jaxtok.configs import common

# Released TiTok generator sampling settings by token count (1d-tokenizer configs/infer/TiTok).
RELEASED = {32: "titok_l32", 64: "titok_b64", 128: "titok_s128"}
SIZES = {"B": (768, 24, 16), "S": (512, 12, 8), "tiny": (32, 2, 2)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args, tiny, (width, depth, heads) = common.generator_arg(arg, SIZES)
  seq_len = int(args.get("tokens", 8 if tiny else 64))
  c = common.generator_base(
      args, tiny, batch_size=2048, total_steps=500_000,
      model=dict(name="maskgit", codebook_size=int(args.get("codebook", 16 if tiny else 4096)),
                 seq_len=seq_len,
                 num_classes=int(args.get("classes", 0 if tiny else 1000)),
                 width=width, depth=depth, heads=heads, class_dropout=0.1),
      optim=dict(lr=1e-3 if tiny else 2e-4, warmup_steps=0 if tiny else 10_000, end_lr=1e-5,
                 b1=0.9, b2=0.96, wd=0.03, clip=1.0),
      sampling=dict(num_steps=4 if tiny else 8, cfg_scale=1.0 if tiny else 3.0,
                    choice_temperature=4.5, schedule="arccos",
                    # Full size: the released generators' own procedure and settings for this
                    # token count (`samplers.maskgit_released.PRESETS`).
                    mode="maskgit" if tiny else "titok",
                    preset=None if tiny else RELEASED.get(seq_len, "titok_demo")))
  return c
