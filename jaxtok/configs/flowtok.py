"""FlowTok (arXiv 2503.10772): flow matching from a caption's projected text tokens straight to the
image's 1D continuous tokens (TA-TiTok VAE, K = 77 tokens of D = 16), `jaxtok.generators.flowtok`.

  configs/flowtok.py:size=B            FlowTok-B velocity net (width 768, 12 blocks, 12 heads)
  configs/flowtok.py:size=XL           FlowTok-XL (1152, 28, 16)
  configs/flowtok.py:size=XL,i2t       the image-to-text model (x0 = image tokens, x1 = text tokens)
  configs/flowtok.py:tiny              a CPU smoke config (text width 16, as the tiny random CLIP)

arg: size, tokens (K = the CLIP text length, 77), token_dim (D, 16), i2t, tiny.

Sizes: DiT-B / DiT-XL velocity nets with a 3-block width-768 text projector, about 153M / 698M
parameters, the counts FlowTok-B / XL are listed with (the paper's layer table itself was not
checked here; FlowTok-H is left out for that reason). Loss weights (KL
1e-2, alignment 1), CFG indicator probability 0.1, AdamW (b1 0.9, b2 0.9, wd 0.03, 5k warmup), batch
1024 and sampling (50 Euler steps, guidance 7) are CrossFlow's release values (qihao067/CrossFlow
configs/*, the code FlowTok's release builds on); FlowTok's own recipe is not reproduced here.

Training batches are {"tokens": float [B, K, D], "label": {"text" [B, K, C], "pooled" [B, P]
(, "null_text", "null_pooled": accepted, unused)}} (`generators.maskgen.text_condition` of the
captions' CLIP features), for `train.generator.make_train_step("flowtok", ...)`; sampling is
`generators.flowtok.sample` / `eval.generate.make_text_sampler("flowtok", ...)`.
"""
import ml_collections

from jaxtok.configs import common

# size -> (width, depth, heads)
SIZES = {"B": (768, 12, 12), "XL": (1152, 28, 16), "tiny": (32, 2, 2)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, size="B", tokens=77, token_dim=16, i2t=False, tiny=False, data="")
  size = "tiny" if a.tiny else a.size
  if size not in SIZES:
    raise ValueError(f"config argument 'size' must be one of {sorted(SIZES)}, got {size!r}")
  for key in ("tokens", "token_dim"):
    if a[key] < 1:
      raise ValueError(f"config argument {key!r} must be >= 1, got {a[key]}")
  tiny = bool(a.tiny)
  width, depth, heads = SIZES[size]
  args = {"data": a.data} if a.data else {}
  return common.generator_base(
      args, tiny, batch_size=1024, total_steps=500_000,
      model=dict(name="flowtok", token_dim=4 if tiny else a.token_dim,
                 seq_len=8 if tiny else a.tokens, text_dim=16 if tiny else 768,
                 pooled_dim=16 if tiny else 768, direction="i2t" if a.i2t else "t2i",
                 width=width, depth=depth, heads=heads, mlp_ratio=4.0,
                 projector_width=32 if tiny else 768, projector_depth=1 if tiny else 3,
                 projector_heads=2 if tiny else 12, align_hidden=32 if tiny else 1024,
                 cfg_prob=0.1, kl_weight=1e-2, align_weight=1.0),
      optim=dict(lr=1e-3 if tiny else 1e-4, warmup_steps=0 if tiny else 5000, end_lr=1e-5,
                 b1=0.9, b2=0.9, wd=0.03, clip=1.0),
      sampling=dict(num_steps=4 if tiny else 50, cfg_scale=1.0 if tiny else 7.0))
