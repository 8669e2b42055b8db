r"""Evaluates a tokenizer checkpoint on a dataset, or generator samples against a reference (gFID).

Tokenizer (default):
  python tools/evaluate.py --checkpoint runs/odp --dataset photos --num_images 64 --out runs/odp/eval \
      [--config configs/onedpiece.py:main] [--token_counts 4,8,16,32] [--inception_weights pt_inception.pth]
  For each token count k (--token_counts; default the config's eval.token_counts, else all K):
  PSNR and SSIM of the 8-bit reconstructions and, with --inception_weights, rFID. At all K tokens:
  codebook usage / perplexity / entropy over every token of the dataset, and pFID (RobusTok: tokens
  perturbed with --pfid_p, --pfid_k, --pfid_fraction, stated in the output). For discrete tokens,
  rate-distortion: k log2(C) bits per image against the bytes JPEG and WebP need for the same PSNR on
  the same image (first --codec_images images). Writes <out>/metrics.json, <out>/rate_distortion.png,
  <out>/psnr_vs_tokens.png and <out>/reconstructions.png.
  Datasets (--dataset): photos (the bundled photographs' fixed held-out crops), folder (--folder,
  images fitted like tools/tokenize_images.py), tfds (--tfds_name, --split, --data_dir; centre crops).

gFID of generator samples:
  python tools/evaluate.py --samples runs/gen/samples/images --reference real_images/ \
      --inception_weights pt_inception.pth --out runs/gen/eval [--save_reference_stats ref.npz]
  --reference is a folder of images or a statistics .npz (mu, sigma) saved earlier.

FIDs are computed only from a user-supplied Inception weights file: nothing is downloaded.
The reports are `jaxtok.eval.report`'s.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from jaxtok.eval import cli  # noqa: E402
from jaxtok.eval import report as report_lib  # noqa: E402

FLAGS = flags.FlagValues()
cli.define_tokenizer_flags(FLAGS)
cli.define_tfds_flags(FLAGS, split="validation")
flags.DEFINE_string("out", None, "output folder for metrics.json and plots", flag_values=FLAGS)
flags.DEFINE_enum("dataset", "photos", list(report_lib.DATASETS), "evaluation images", flag_values=FLAGS)
flags.DEFINE_string("folder", None, "image folder (--dataset folder)", flag_values=FLAGS)
flags.DEFINE_integer("num_images", None, "images evaluated (default: photos of a training checkpoint: "
                     "its config's held-out set, data.heldout crops; otherwise 64)", flag_values=FLAGS)
flags.DEFINE_string("token_counts", None, "comma-separated token counts (default: config.eval."
                    "token_counts, else all K)", flag_values=FLAGS)
flags.DEFINE_string("inception_weights", None, "FID Inception weights file: enables rFID / pFID / gFID",
                    flag_values=FLAGS)
flags.DEFINE_float("pfid_p", 0.1, "pFID: probability a token draws a neighbour", flag_values=FLAGS)
flags.DEFINE_integer("pfid_k", 5, "pFID: neighbours drawn from (own code included)", flag_values=FLAGS)
flags.DEFINE_float("pfid_fraction", 1.0, "pFID: fraction of each batch's images perturbed",
                   flag_values=FLAGS)
flags.DEFINE_integer("codec_images", 16, "images for the JPEG/WebP comparison (0 = skip)",
                     flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "rng seed (stochastic decoders, pFID perturbation)", flag_values=FLAGS)
flags.DEFINE_string("samples", None, "gFID mode: folder of generated images", flag_values=FLAGS)
flags.DEFINE_string("reference", None, "gFID mode: folder of real images or statistics .npz",
                    flag_values=FLAGS)
flags.DEFINE_string("save_reference_stats", None, "gFID mode: also save the reference statistics here",
                    flag_values=FLAGS)


def main(argv) -> dict:
  cli.parse(FLAGS, argv, __doc__)
  if not FLAGS.out:
    raise ValueError("--out is required: the folder for metrics.json and the plots")
  os.makedirs(FLAGS.out, exist_ok=True)
  if FLAGS.samples:
    report = report_lib.evaluate_samples(
        FLAGS.samples, FLAGS.reference, inception_weights=FLAGS.inception_weights,
        save_reference_stats=FLAGS.save_reference_stats, batch_size=FLAGS.batch_size)
  else:
    report = report_lib.evaluate_tokenizer(
        FLAGS.config, FLAGS.checkpoint, out=FLAGS.out, dataset=FLAGS.dataset, use_ema=FLAGS.use_ema,
        requested_counts=FLAGS.token_counts, num_images=FLAGS.num_images, folder=FLAGS.folder,
        fit=FLAGS.fit, tfds_name=FLAGS.tfds_name, split=FLAGS.split, data_dir=FLAGS.data_dir,
        inception_weights=FLAGS.inception_weights, pfid_p=FLAGS.pfid_p, pfid_k=FLAGS.pfid_k,
        pfid_fraction=FLAGS.pfid_fraction, codec_images=FLAGS.codec_images, seed=FLAGS.seed,
        batch_size=FLAGS.batch_size)
  with open(os.path.join(FLAGS.out, "metrics.json"), "w") as f:
    json.dump(report, f, indent=2, default=str)
  print(json.dumps({k: v for k, v in report.items() if k in ("per_token_count", "codebook", "gfid")},
                   default=str), flush=True)
  return report


if __name__ == "__main__":
  main(sys.argv)
