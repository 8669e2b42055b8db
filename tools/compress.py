"""Compresses a folder of images into jaxtok token files (one `.jtk` per image).

  python tools/compress.py --checkpoint runs/main --prior runs/main_prior --input imgs/ --output jtk/
  python tools/compress.py ... --target_psnr 24     # per image: the fewest tokens reaching 24 dB
  python tools/compress.py ... --max_bytes 24       # per image: the most tokens fitting 24 bytes

Images are fitted to the tokenizer's size, or to --size (a multiple of it: coded as tiles in one file),
with --fit crop | stretch. The prior (--prior_kind: causal,
unigram, unigram_pos, or uniform which needs no --prior) comes from tools/train_prior.py; decoding
needs the same checkpoint and prior (tools/decompress.py). Writes <output>/<name>.jtk and
<output>/summary.json (tokens, bytes and PSNR per image).
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from jaxtok.eval import cli  # noqa: E402
from jaxtok.eval import images as img_lib  # noqa: E402

FLAGS = flags.FlagValues()
cli.define_codec_flags(FLAGS, inputs="folder of images", outputs="folder for the .jtk files")
flags.DEFINE_enum("fit", "crop", list(img_lib.FITS), "how images meet the tokenizer's size",
                  flag_values=FLAGS)
flags.DEFINE_integer("size", None, "fit images to size x size, a multiple of the tokenizer's size "
                     "(coded as tiles; default: the tokenizer's size)", flag_values=FLAGS)
flags.DEFINE_integer("num_tokens", None, "tokens per image (default: all, or chosen by "
                     "--target_psnr / --max_bytes)", flag_values=FLAGS)
flags.DEFINE_float("target_psnr", None, "fewest tokens whose decoded image reaches this PSNR (dB)",
                   flag_values=FLAGS)
flags.DEFINE_integer("max_bytes", None, "most tokens whose whole file fits this many bytes",
                     flag_values=FLAGS)


def main(argv) -> dict:
  cli.parse(FLAGS, argv, __doc__)
  chosen = [f for f in ("num_tokens", "target_psnr", "max_bytes") if FLAGS[f].value is not None]
  if len(chosen) > 1:
    raise ValueError(f"give at most one of --num_tokens, --target_psnr, --max_bytes, got {chosen}")
  if not FLAGS.checkpoint or not FLAGS.input or not FLAGS.output:
    raise ValueError("--checkpoint, --input and --output are required")
  from jaxtok.codec import image_codec, prior_training  # pylint: disable=g-import-not-at-top
  model = prior_training.load_model(FLAGS.checkpoint, FLAGS.prior, FLAGS.prior_kind)
  paths = img_lib.list_images(FLAGS.input)
  images = img_lib.to_uint8(img_lib.load_images(FLAGS.input, paths,
                                                FLAGS.size or model.tokenizer.image_size, FLAGS.fit))
  if FLAGS.target_psnr is not None or FLAGS.max_bytes is not None:
    choices = image_codec.choose_length(model, images, target_psnr=FLAGS.target_psnr,
                                        max_bytes=FLAGS.max_bytes)
  else:
    k = FLAGS.num_tokens or model.tokenizer.max_tokens
    datas = [image_codec.compress(model, im, num_tokens=k) for im in images]
    recs = image_codec.reconstructions(model, images, [k])[k]
    choices = [image_codec.Choice(k, d, float(image_codec.psnr(im, r)), True)
               for d, im, r in zip(datas, images, recs)]
  os.makedirs(FLAGS.output, exist_ok=True)
  summary = {"checkpoint": os.path.abspath(FLAGS.checkpoint), "prior": FLAGS.prior,
             "prior_kind": FLAGS.prior_kind, "files": {}}
  for path, c in zip(paths, choices):
    name = img_lib.output_name(path)[:-4] + ".jtk"
    with open(os.path.join(FLAGS.output, name), "wb") as f:
      f.write(c.data)
    summary["files"][name] = {"source": path, "num_tokens": c.num_tokens, "bytes": len(c.data),
                              "psnr": c.psnr, "reached": c.reached}
  with open(os.path.join(FLAGS.output, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  total = sum(len(c.data) for c in choices)
  print(f"{len(choices)} images -> {FLAGS.output}: {total} bytes in all "
        f"({total / max(1, len(choices)):.1f} per image)", flush=True)
  return summary


if __name__ == "__main__":
  main(sys.argv)
