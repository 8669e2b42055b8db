"""Instella-T2I's binary diffusion over the bits of a 1D binary tokenizer (configs/instella.py):
Bernoulli corruption toward 1/2 at logit-normal training times, flip-logit model (`jaxtok.generators.binary_diffusion`), the
release's sampler (`jaxtok.samplers.binary_diffusion`, 20 steps, guidance (1 + w) c - w u).

  python tools/pretokenize.py --checkpoint runs/instella_tok --out runs/bits
  python tools/train_generator.py --config configs/binary_diffusion.py:tiny --data runs/bits --workdir runs/bd
  python tools/sample.py --config configs/binary_diffusion.py:tiny --workdir runs/bd

arg: "size=B,tokens=128,bits=64,classes=1000" or "tiny" (8 tokens of 32 bits, unconditional).
"""
import ml_collections

from jaxtok.configs import binary_ar


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = binary_ar.bit_generator_config(arg, "binary_diffusion", steps=20)
  c.model.time_sampling = "logit_normal"  # the release's non_uniform_t = True
  return c
