"""TokenBridge generator over jaxtok's 1D VAE tokens, quantized dimension-wise on the fly (2**bits
levels per channel), with the channel-autoregressive adaLN head.

  python tools/train_generator.py --config configs/tokenbridge_vae.py:tiny --data runs/vae_tokens --workdir runs/tb
  python tools/sample.py --config configs/tokenbridge_vae.py:tiny --workdir runs/tb --num_samples 16

arg: "size=B,tokens=64,token_dim=16,classes=1000,bits=6" or "tiny". The head's channel order is
`model.channel_order` (None = index order); `jaxtok.generators.tokenbridge.frequency_order(tokens)`
computes a frequency ordering from a sample of the training tokens (the release's fixed
`tokenbridge.RELEASE_CHANNEL_ORDER` fits only MAR's KL-16 VAE latents).
"""
import ml_collections

from jaxtok.configs import common

# (width, depth, heads, head_width, head_depth, head_heads). Heads as the release's tokenbridge_large
# (1024 wide, depth 4, 8 heads) and tokenbridge_huge (depth 6); the release has no B (B takes L's
# head). Backbones: jaxtok's one MAR trunk, depth as configs/mar_vae (the release's large/huge run a
# 16 + 16 / 20 + 20 block MAE encoder/decoder at width 1024 / 1280).
SIZES = {"B": (768, 12, 12, 1024, 4, 8), "L": (1024, 16, 16, 1024, 4, 8),
         "H": (1280, 20, 16, 1024, 6, 8), "tiny": (32, 2, 2, 32, 1, 2)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args, tiny, (width, depth, heads, head_width, head_depth, head_heads) = common.generator_arg(
      arg, SIZES, keys=("tokens", "token_dim", "classes", "bits"))
  return common.generator_base(
      args, tiny, batch_size=1024, total_steps=400_000,
      model=dict(name="tokenbridge", token_dim=int(args.get("token_dim", 4 if tiny else 16)),
                 seq_len=int(args.get("tokens", 8 if tiny else 64)),
                 num_classes=int(args.get("classes", 0 if tiny else 1000)),
                 width=width, depth=depth, heads=heads, head_width=head_width,
                 head_depth=head_depth, head_heads=head_heads,
                 bits=int(args.get("bits", 3 if tiny else 6)), std_range=3.0, value_range=5.0,
                 channel_order=None, class_dropout=0.1),
      optim=dict(lr=1e-3 if tiny else 8e-4, warmup_steps=0 if tiny else 10_000, end_lr=0.0,
                 b1=0.9, b2=0.95, wd=0.02, clip=3.0),
      sampling=dict(num_iters=4 if tiny else 64, cfg_scale=1.0 if tiny else 3.0,
                    temperature=1.0))
