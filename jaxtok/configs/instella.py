"""Instella-T2I's 1D binary tokenizer as a configuration of TiTok: `configs/titok.py` with the binary
Bernoulli quantizer (`jaxtok.quantizers.binary`, the release's BinaryQuantizer) and `bits` bits per
latent token (the release: 128 tokens of 64 bits). With bits > 31 the tokens are the bits themselves,
int32 [K, bits] in {0, 1}: the data of the binary generators (configs/binary_diffusion.py,
configs/binary_ar.py).

  python tools/train.py --config configs/instella.py:tiny --workdir runs/instella_tok
  python tools/pretokenize.py --checkpoint runs/instella_tok --out runs/bits

arg: "bits=64" plus any configs/titok.py argument except quantizer (e.g. "size=B,tokens=128,bits=64"
or "tiny": 8 tokens of 32 bits).
"""
import ml_collections

from jaxtok.configs import titok


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  bits, rest = None, []
  for part in parts:
    key, _, value = part.partition("=")
    if key.strip() == "quantizer":
      raise ValueError(f"configs/instella.py always uses quantizer=binary, got {part!r}")
    if key.strip() == "bits":
      try:
        bits = int(value)
      except ValueError:
        raise ValueError(f"config argument 'bits' must be an int, got {value!r}") from None
      if bits < 1:
        raise ValueError(f"config argument 'bits' must be >= 1, got {bits}")
    else:
      rest.append(part)
  c = titok.get_config(",".join(rest + ["quantizer=binary"]))
  tiny = "tiny" in rest
  c.model.token_size = bits or (32 if tiny else 64)
  return c
