"""Instella-T2I's 1D binary tokenizer approximated as a configuration of TiTok (the released
autoencoder is a different network: the "release" variant below): `configs/titok.py` with the binary
Bernoulli quantizer (`jaxtok.quantizers.binary`, the release's BinaryQuantizer) and `bits` bits per
latent token (the release: 128 tokens of 64 bits). With bits > 31 the tokens are the bits themselves,
int32 [K, bits] in {0, 1}: the data of the binary generators (configs/binary_diffusion.py,
configs/binary_ar.py).

  python tools/train.py --config configs/instella.py:tiny --workdir runs/instella_tok
  python tools/pretokenize.py --checkpoint runs/instella_tok --out runs/bits

arg: "bits=64" plus any configs/titok.py argument except quantizer (e.g. "size=B,tokens=128,bits=64"
or "tiny": 8 tokens of 32 bits).

"release": the released autoencoder instead (`tokenizers.instella_bae`: Llama-style blocks with Flux
RoPE, DC resize blocks, learned bit embedding; 512 px, 128 tokens of 64 bits, RoPE scale 64 as the
release's bae_scale 1024), trained with TiTok's single-stage losses (the release's own autoencoder
training recipe is not released); "release,tiny": 16 px, 8 tokens of 32 bits, two blocks each side.
Converted released weights: `python tools/convert.py --model instella --config instella_t2i_bae`.
"""
import ml_collections

from jaxtok.configs import titok


def release_config(tiny: bool) -> ml_collections.ConfigDict:
  """The released autoencoder's run config (module docstring)."""
  from jaxtok.convert.instella import RELEASED  # pylint: disable=g-import-not-at-top
  c = titok.get_config("tiny" if tiny else None)
  model = dict(RELEASED["instella_t2i_bae"])
  if tiny:
    model.update(image_size=16, patch_size=4, num_latent_tokens=8, bits=32, encoder_width=32,
                 encoder_depth=2, encoder_heads=2, decoder_width=32, decoder_depth=2,
                 decoder_heads=2, downsample_idx=(0,), upsample_idx=(0,), axes_dim=(4, 6, 6),
                 rope_scale=8.0)
  c.model = ml_collections.ConfigDict(model)
  c.data.image_size = model["image_size"]
  c.eval.token_counts = [model["num_latent_tokens"]]
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  if "release" in parts:
    extra = sorted(set(parts) - {"release", "tiny"})
    if extra:
      raise ValueError(f"configs/instella.py:release takes only 'tiny', got {extra}")
    return release_config("tiny" in parts)
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
