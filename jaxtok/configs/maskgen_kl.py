"""MaskGen-KL (arXiv 2501.07730): text-to-image masked generation over TA-TiTok's continuous tokens.

  configs/maskgen_kl.py:size=L       MaskGen-KL-L (width 1024, 16 MM-DiT blocks, 16 heads; head 1024 x 8)
  configs/maskgen_kl.py:size=XL      MaskGen-KL-XL (1280, 20, 16; head 1280 x 8)
  configs/maskgen_kl.py:tiny         a CPU smoke config (text width 16, as the tiny random CLIP)

arg: size, tokens (K, default 32 = tatitok_bl32_vae), token_dim (D, 16), tiny.
Stage-1 recipe (bytedance/1d-tokenizer configs/training/MaskGen/maskgen_kl_*_stage1.yaml): AdamW lr
1e-4 (b1 0.9, b2 0.95, wd 0.02), 50k warmup then constant (end_lr = lr), 1M steps, batch 32 per
GPU on 32 GPUs, clip 1.0, EMA; caption dropout 0.1, scale_factor 0.7525, diffusion batch
multiplier 4. Sampling: the release's (`generators.maskgen_kl.SAMPLING`: 32 iterations, CFG 3.0
linear, temperature 1, 100 DDPM steps, aesthetic score 6.5).

Training batches are {"tokens": float32 [B, K, D] (or the posterior moments [B, K, 2D]), "label":
{"text", "pooled", "null_text", "null_pooled"[, "aesthetic"]}} (MaskGen-VQ's condition dict), for
`train.generator.make_train_step("maskgen_kl", ...)`. tools/train_generator.py reads token datasets
with integer labels only, so it does not train this config.
"""
import ml_collections

from jaxtok.configs import common

# width, depth, heads, head width, head depth
SIZES = {"L": (1024, 16, 16, 1024, 8), "XL": (1280, 20, 16, 1280, 8), "tiny": (32, 2, 2, 32, 2)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args, tiny, (width, depth, heads, head_width, head_depth) = common.generator_arg(
      arg, SIZES, keys=("tokens", "token_dim"))
  lr = 1e-3 if tiny else 1e-4
  return common.generator_base(
      args, tiny, batch_size=1024, total_steps=1_000_000,
      model=dict(name="maskgen_kl", token_dim=int(args.get("token_dim", 4 if tiny else 16)),
                 seq_len=int(args.get("tokens", 8 if tiny else 32)), width=width, depth=depth,
                 heads=heads, text_dim=16 if tiny else 768, micro_condition=True,
                 micro_condition_dim=8 if tiny else 256, text_drop_prob=0.1,
                 sample_aesthetic_score=6.5, scale_factor=0.7525, head_width=head_width,
                 head_depth=head_depth, diffusion_batch_mul=4),
      optim=dict(lr=lr, warmup_steps=0 if tiny else 50_000, end_lr=lr, b1=0.9, b2=0.95, wd=0.02,
                 clip=1.0),
      sampling=dict(num_iters=4 if tiny else 32, cfg_scale=3.0, cfg_schedule="linear",
                    temperature=1.0))
