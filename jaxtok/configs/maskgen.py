"""MaskGen-VQ (arXiv 2501.07730): text-to-image masked generation over TA-TiTok's discrete tokens.

  configs/maskgen.py:size=L          MaskGen-VQ-L (width 1024, 16 MM-DiT blocks, 16 heads)
  configs/maskgen.py:size=XL         MaskGen-VQ-XL (1280, 20, 16)
  configs/maskgen.py:tiny            a CPU smoke config (text width 16, as the tiny random CLIP)

arg: size, tokens (K, default 128 = tatitok_bl128_vq), codebook (8192), tiny.
Stage-1 recipe (bytedance/1d-tokenizer configs/training/MaskGen/maskgen_vq_*_stage1.yaml): AdamW lr
4e-4 (b1 0.9, b2 0.96, wd 0.03), 10k warmup, cosine to 1e-5, 500k steps, batch 128 per GPU, clip
1.0, EMA; label smoothing 0.1, unmasked-token weight 0.1, caption dropout 0.1. Sampling: the
release's (`generators.maskgen.SAMPLING`: 16 steps, guidance 12 with its cosine decay, randomize
temperature 2, softmax annealing, aesthetic score 6.5); tools/sample.py --prompt.

Training batches are {"tokens": int32 [B, K], "label": {"text", "pooled", "null_text",
"null_pooled"[, "aesthetic"]}} (the captions' CLIP features, `generators.maskgen`).
tools/train_generator.py builds them from a captioned token dataset (`train.generator.text_labels`):
tools/pretokenize.py on a TA-TiTok run writes each crop's caption and the captions' CLIP features
(the TA-TiTok run's text tower), and tools/sample.py --prompt encodes prompts with the same tower:

  python tools/train.py --config configs/tatitok.py:tiny --workdir runs/tatitok
  python tools/pretokenize.py --checkpoint runs/tatitok --out runs/tatitok_tokens --num_examples 256
  python tools/train_generator.py --config configs/maskgen.py:tiny --data runs/tatitok_tokens \
      --workdir runs/maskgen
  python tools/sample.py --config configs/maskgen.py:tiny --workdir runs/maskgen --prompt "a photo of a cat"
"""
import ml_collections

from jaxtok.configs import common

SIZES = {"L": (1024, 16, 16), "XL": (1280, 20, 16), "tiny": (32, 2, 2)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args, tiny, (width, depth, heads) = common.generator_arg(arg, SIZES, keys=("tokens", "codebook"))
  c = common.generator_base(
      args, tiny, batch_size=1024, total_steps=500_000,
      model=dict(name="maskgen", codebook_size=int(args.get("codebook", 64 if tiny else 8192)),
                 seq_len=int(args.get("tokens", 8 if tiny else 128)),
                 num_classes=0 if tiny else 1000, width=width, depth=depth, heads=heads,
                 text_dim=16 if tiny else 768, micro_condition=True,
                 micro_condition_dim=8 if tiny else 256, text_drop_prob=0.1,
                 sample_aesthetic_score=6.5),
      optim=dict(lr=1e-3 if tiny else 4e-4, warmup_steps=0 if tiny else 10_000, end_lr=1e-5,
                 b1=0.9, b2=0.96, wd=0.03, clip=1.0),
      sampling=dict(num_steps=4 if tiny else 16, guidance_scale=12.0, randomize_temperature=2.0,
                    guidance_decay="maskgen_cosine", guidance_scale_pow=1.0,
                    softmax_temperature_annealing=True))
  return c
