"""Rate-distortion of real token files against JPEG / WebP / AVIF on a run's held-out crops.

  python tools/codec_eval.py --checkpoint runs/main --prior runs/main_prior --out runs/main_codec

For every token count and every prior (uniform = raw ids, unigram, per-position unigram, causal GPT)
codes the held-out crops into whole token files and measures their bytes (headers included), and the
bytes each image codec needs to reach the same PSNR per image (whole files; `jaxtok.codec.evaluate`).
--image_size 96 --max_scale 1 evaluates larger held-out crops, coded as whole tiles of the tokenizer's
size in one file (3 x 3 tiles of the 32 px main job). --images unseen evaluates 256 x 256 crops of
photographs no run trains on (8 x 8 tiles of the main job per file). Writes <out>/rate_distortion.json,
<out>/rate_distortion.png and prints a table.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from jaxtok.eval import cli  # noqa: E402

FLAGS = flags.FlagValues()
flags.DEFINE_string("checkpoint", None, "the tokenizer's training run directory", flag_values=FLAGS)
flags.DEFINE_string("prior", None, "priors folder (tools/train_prior.py)", flag_values=FLAGS)
flags.DEFINE_string("out", None, "output folder", flag_values=FLAGS)
flags.DEFINE_integer("heldout", None, "held-out crops (default: the run's data.heldout)",
                     flag_values=FLAGS)
flags.DEFINE_list("counts", None, "token counts per tile (default 1..K)", flag_values=FLAGS)
flags.DEFINE_integer("image_size", None, "held-out crop size, a multiple of the tokenizer's (coded "
                     "as tiles; default: the run's)", flag_values=FLAGS)
flags.DEFINE_enum("images", "heldout", ["heldout", "unseen"], "heldout: the run's held-out crops; "
                  "unseen: every --image_size grid crop (default 256) of the photographs no run "
                  "trains on (`data.photos.UNSEEN_PHOTOS`), at full resolution", flag_values=FLAGS)
flags.DEFINE_integer("max_scale", None, "held-out crops' largest down-scale (default: the run's)",
                     flag_values=FLAGS)


def table(result: dict) -> str:
  rows = result["rows"]
  names = [k[:-6] for k in rows[0] if k.endswith("_bytes") and k != "token_bytes"]
  lines = ["| tokens | PSNR dB | " + " | ".join(f"{n} B" for n in names) + " |",
           "|---:" * (2 + len(names)) + "|"]
  for r in rows:
    lines.append(f"| {r['num_tokens']} | {r['psnr']:.2f} | "
                 + " | ".join(f"{r[n + '_bytes']:.1f}" for n in names) + " |")
  return "\n".join(lines)


def main(argv) -> dict:
  cli.parse(FLAGS, argv, __doc__)
  if not FLAGS.checkpoint or not FLAGS.prior or not FLAGS.out:
    raise ValueError("--checkpoint, --prior and --out are required")
  from jaxtok.codec import evaluate, prior_training  # pylint: disable=g-import-not-at-top
  from jaxtok.metrics import plots  # pylint: disable=g-import-not-at-top
  model = prior_training.load_model(FLAGS.checkpoint, FLAGS.prior, "uniform")
  priors = {kind: prior_training.load(FLAGS.prior, kind, model.tokenizer)
            for kind in prior_training.KINDS}
  if FLAGS.images == "unseen":
    from jaxtok.data import photos  # pylint: disable=g-import-not-at-top
    images = photos.grid_crops([p for _, p in photos.unseen_photos()], FLAGS.image_size or 256)
    images = images[:FLAGS.heldout] if FLAGS.heldout else images
  else:
    images = prior_training.heldout_images(prior_training.run_data_config(FLAGS.checkpoint),
                                           FLAGS.heldout, image_size=FLAGS.image_size,
                                           max_scale=FLAGS.max_scale)
  counts = [int(c) for c in FLAGS.counts] if FLAGS.counts else None
  result = evaluate.evaluate(model.tokenizer, model.params, priors, images, counts=counts)
  result["targets"] = evaluate.targets(result)
  result.update(checkpoint=os.path.abspath(FLAGS.checkpoint), prior=os.path.abspath(FLAGS.prior))
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, "rate_distortion.json"), "w") as f:
    json.dump(result, f, indent=1)
  plots.rate_distortion(result["rows"], os.path.join(FLAGS.out, "rate_distortion.png"),
                        title="token files vs image codecs at equal PSNR")
  print(table(result), flush=True)
  print(json.dumps({"bits_per_token": result["bits_per_token"], "targets": result["targets"]},
                   indent=1), flush=True)
  return result


if __name__ == "__main__":
  main(sys.argv)
