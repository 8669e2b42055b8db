"""Decodes jaxtok token files (tools/compress.py) back to PNG images.

  python tools/decompress.py --checkpoint runs/main --prior runs/main_prior --input jtk/ --output out/
  python tools/decompress.py ... --partial     # truncated files: the image at the tokens they hold

Needs the tokenizer checkpoint and prior the files were made with (a file of another model is refused,
as are truncated files without --partial and corrupted ones). Writes <output>/<name>.png.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from jaxtok.eval import cli  # noqa: E402
from jaxtok.eval import images as img_lib  # noqa: E402

FLAGS = flags.FlagValues()
cli.define_codec_flags(FLAGS, inputs="folder of .jtk files", outputs="folder for the PNGs")
flags.DEFINE_bool("partial", False, "decode truncated files progressively", flag_values=FLAGS)


def main(argv) -> dict:
  cli.parse(FLAGS, argv, __doc__)
  if not FLAGS.checkpoint or not FLAGS.input or not FLAGS.output:
    raise ValueError("--checkpoint, --input and --output are required")
  names = sorted(n for n in os.listdir(FLAGS.input) if n.endswith(".jtk")) \
      if os.path.isdir(FLAGS.input) else []
  if not names:
    raise FileNotFoundError(f"--input: expected a folder of .jtk files, got {FLAGS.input!r}")
  from jaxtok.codec import image_codec, prior_training  # pylint: disable=g-import-not-at-top
  model = prior_training.load_model(FLAGS.checkpoint, FLAGS.prior, FLAGS.prior_kind)
  out = {}
  for name in names:
    with open(os.path.join(FLAGS.input, name), "rb") as f:
      data = f.read()
    try:
      image, used = image_codec.decompress(model, data, partial=FLAGS.partial)
    except ValueError as err:
      raise ValueError(f"{name}: {err}") from None
    img_lib.save_png(os.path.join(FLAGS.output, name[:-4] + ".png"), image)
    out[name] = used
  print(f"{len(out)} files -> {FLAGS.output}", flush=True)
  return out


if __name__ == "__main__":
  main(sys.argv)
