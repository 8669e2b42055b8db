"""Converts an official PyTorch checkpoint to a jaxtok orbax checkpoint plus its config.

  python tools/convert.py --model titok --config tokenizer_titok_l32_imagenet \
      --weights tokenizer_titok_l32.bin --out /tmp/titok_l32

--model: titok | onedpiece | vqgan | maskgit | rar | flextok | dinov2 | tatitok | clip_text | maskgen | siglip | t5 | maskgen_kl | gpstoken | gpstoken_gen | instella | olmo | instella_diff | instella_ar | ldm_vae. --config: a released model name (see
--list), a jaxtok config as JSON (a string or a file), an official config (e.g. the HF config.json),
or omitted to read the sizes off the tensor shapes. --weights: .safetensors, or a PyTorch file read
with torch.load(weights_only=True) (needs torch). Writes OUT/params (orbax) and OUT/config.json;
`jaxtok.convert.load_converted(OUT)` reads them back (a tokenizer also loads with
`jaxtok.train.checkpoint.load_params(OUT, jaxtok.tokenizers.api.build(config).abstract_params())`).
OLMo: --weights is the HF checkpoint directory (config.json + safetensors).
GPSToken's generator: --initg initg.pickle (the release's per-class layouts) writes OUT's layout bank
(layouts.npy, labels.npy), from which tools/sample.py --workdir OUT draws each sample's layout.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

_MODEL = flags.DEFINE_enum("model", None, ["titok", "onedpiece", "vqgan", "maskgit", "rar", "flextok", "dinov2", "tatitok", "clip_text", "maskgen", "siglip", "t5", "maskgen_kl", "gpstoken", "gpstoken_gen", "instella", "olmo", "instella_diff", "instella_ar", "ldm_vae"],
                           "kind of official checkpoint")
_CONFIG = flags.DEFINE_string("config", None, "released name, JSON config (string or file), or "
                              "omitted (inferred from the shapes)")
_WEIGHTS = flags.DEFINE_string("weights", None, "official checkpoint (.safetensors/.bin/.pt/.pth; "
                              "ldm_vae: also .ckpt or a diffusers model directory)")
_OUT = flags.DEFINE_string("out", None, "output directory (params/ and config.json)")
_INITG = flags.DEFINE_string("initg", None, "gpstoken_gen: the release's initg.pickle, written as "
                             "OUT's layout bank (layouts.npy, labels.npy)")
_LIST = flags.DEFINE_bool("list", False, "print the released model names and exit")


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from jaxtok import convert  # pylint: disable=g-import-not-at-top
  if _LIST.value:
    from jaxtok.convert import maskgit, rar, titok, vqgan  # pylint: disable=g-import-not-at-top
    for kind, names in (("titok/onedpiece", titok.RELEASED), ("vqgan", vqgan.RELEASED),
                        ("maskgit", maskgit.RELEASED), ("rar", rar.RELEASED)):
      for name in names:
        print(f"{kind:16s} {name}")
    return
  for flag in (_MODEL, _WEIGHTS, _OUT):
    if flag.value is None:
      raise app.UsageError(f"--{flag.name} is required")
  if _INITG.value and _MODEL.value != "gpstoken_gen":
    raise app.UsageError(f"--initg is for --model gpstoken_gen, got --model {_MODEL.value}")
  config, params = convert.convert(_MODEL.value, _WEIGHTS.value, _CONFIG.value)
  out = convert.save_converted(_OUT.value, config, params)
  if _INITG.value:
    from jaxtok.convert import gpstoken_gen  # pylint: disable=g-import-not-at-top
    print(f"wrote {gpstoken_gen.write_bank(out, _INITG.value, config)} layouts to {out}/layouts.npy")
  count = sum(int(x.size) for x in jax.tree.leaves(params))
  print(f"wrote {out}/params ({count:,} parameters) and {out}/config.json: {config}")


if __name__ == "__main__":
  app.run(main)
