"""Instella-T2I's released text-to-image generators over the binary autoencoder's bits
(`jaxtok.generators.instella_diff` / `instella_ar`), conditioned on AMD-OLMo-1B hidden states.

arg: "model=diff" (default) or "model=ar", then "tiny" (8 tokens of 8 bits, width 32, 2 layers,
text width 16) or the released sizes (64 bits, 128 tokens, width 2048, 16 layers of 16 heads, text
width 2048 = AMD-OLMo-1B's, one block per OLMo layer). The optimizer follows the release's configs
(lr 1e-4, 1000 warmup steps, grad clip 1, batch 256; tiny: lr 1e-3, no warmup); sampling: the
release's defaults (diffusion: 20 steps, rho 1, guidance w 7.5, protocol 1; AR: w 7.5, delta 0).

`model.text` names the OLMo tower (`generators.instella_t2i`): released sizes read the user's
converted AMD-OLMo-1B (`tools/convert.py --model olmo`) and its tokenizer.json, set with
`--config.model.text.olmo_checkpoint=DIR --config.model.text.tokenizer_json=FILE`; tiny uses a
random 2-layer tower of width 16 with a byte tokenizer (plumbing only). Training:
`tools/train_generator.py` on a token dataset of the binary autoencoder's bits with captions;
sampling: `tools/sample.py --prompt ...`. Guidance cfg_scale is the library's s = w + 1.
"""
import ml_collections

from jaxtok.configs import common

_RELEASED = dict(num_bits=64, seq_len=128, text_dim=2048, width=2048, depth=16, heads=16)
_TINY = dict(num_bits=8, seq_len=8, text_dim=16, width=32, depth=2, heads=2)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, tiny=False, model="diff", data="")
  if a.model not in ("diff", "ar"):
    raise ValueError(f"config argument 'model' must be 'diff' or 'ar', got {a.model!r}")
  tiny = bool(a.tiny)
  model = dict(_TINY if tiny else _RELEASED, name=f"instella_{a.model}", uncond_prob=0.1)
  if a.model == "diff":
    model["time_sampling"] = "logit_normal"
    sampling = dict(num_steps=8 if tiny else 20, temperature=1.0, cfg_scale=8.5, protocol=1)
  else:
    sampling = dict(temperature=1.0, cfg_scale=8.5, bit_delta=0.0)
  # One OLMo layer per network block, of the network's text width.
  model["text"] = (dict(random_init_for_smoke_test=True,
                        olmo=dict(width=_TINY["text_dim"], depth=_TINY["depth"], num_heads=2,
                                  mlp_hidden=32, vocab_size=260))
                   if tiny else dict(olmo_checkpoint="", tokenizer_json=""))
  return common.generator_base(
      {"data": a.data}, tiny, batch_size=256, total_steps=2_000_000, model=model,
      optim=dict(lr=1e-3 if tiny else 1e-4, warmup_steps=0 if tiny else 1000, end_lr=1e-3 if tiny
                 else 1e-4, b1=0.9, b2=0.999, wd=0.0, clip=1.0),
      sampling=sampling)
