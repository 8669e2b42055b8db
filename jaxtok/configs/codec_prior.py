"""A small causal GPT as the token prior of `jaxtok.codec` (trained by tools/train_prior.py).

arg: "vocab=V,tokens=K" (V: the compact vocabulary incl. the escape id, K: tokens per image), plus
"tiny" for tests. The prior sees the main job's 16 ordered tokens; the compact vocabulary (codes seen
in the training tokens, `jaxtok.codec.vocab`) keeps its softmax small on CPU.
"""
import ml_collections

from jaxtok.configs import common

SIZES = {"B": (128, 3, 4), "tiny": (16, 1, 2)}  # generator_arg's default size is "B"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args, tiny, (width, depth, heads) = common.generator_arg(arg, SIZES, keys=("tokens", "vocab"))
  c = common.generator_base(
      args, tiny, batch_size=128, total_steps=3000,
      model=dict(name="gpt", codebook_size=int(args.get("vocab", 16)),
                 seq_len=int(args.get("tokens", 16)), num_classes=0, width=width, depth=depth,
                 heads=heads, class_dropout=0.0),
      optim=dict(lr=1e-3, warmup_steps=0 if tiny else 200, end_lr=0.0, b1=0.9, b2=0.95, wd=0.05,
                 clip=1.0),
      sampling=dict(temperature=1.0, top_k=0, top_p=1.0, cfg_scale=1.0, cfg_schedule="constant"))
  c.ema_decay = 0.0
  c.ckpt_every = c.total_steps
  return c
