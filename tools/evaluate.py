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
  images fitted like tools/tokenize.py), tfds (--tfds_name, --split, --data_dir; centre crops).

gFID of generator samples:
  python tools/evaluate.py --samples runs/gen/samples/images --reference real_images/ \
      --inception_weights pt_inception.pth --out runs/gen/eval [--save_reference_stats ref.npz]
  --reference is a folder of images or a statistics .npz (mu, sigma) saved earlier.

FIDs are computed only from a user-supplied Inception weights file: nothing is downloaded.
"""
from __future__ import annotations

import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from jaxtok.eval import cli  # noqa: E402
from jaxtok.eval import images as img_lib  # noqa: E402

log = logging.getLogger("evaluate")
DATASETS = ("photos", "folder", "tfds")

FLAGS = flags.FlagValues()
cli.define_tokenizer_flags(FLAGS)
cli.define_tfds_flags(FLAGS, split="validation")
flags.DEFINE_string("out", None, "output folder for metrics.json and plots", flag_values=FLAGS)
flags.DEFINE_enum("dataset", "photos", list(DATASETS), "evaluation images", flag_values=FLAGS)
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


def dataset_images(size: int, run_data=None) -> tuple[np.ndarray, dict]:
  """float32 [N, size, size, 3] evaluation images of --dataset, and a description.

  run_data: the `data` config of the training run that wrote the checkpoint (None for other
  checkpoints). With --dataset photos it defines the held-out set exactly as the run's own
  evaluation did (`pipeline.heldout_images`: data.heldout crops at data.max_scale), so this tool and
  the training job report the same numbers; --num_images changes only the count.
  """
  n = FLAGS.num_images
  if n is not None and n < 2:
    raise ValueError(f"--num_images must be >= 2, got {n}")
  if FLAGS.dataset == "photos":
    from jaxtok.data import pipeline  # pylint: disable=g-import-not-at-top
    if run_data is not None and pipeline._get(run_data, "source", "photos") == "photos":  # pylint: disable=protected-access
      data = run_data.to_dict() if hasattr(run_data, "to_dict") else dict(run_data)
      data["image_size"] = size
      held = pipeline.heldout_images(data, count=n)
      return held, {"dataset": "photos", "split": "the run's held-out crops (its data config)",
                    "max_scale": int(data.get("max_scale", 4))}
    held = pipeline.heldout_images({"source": "photos", "image_size": size, "max_scale": 4},
                                   count=64 if n is None else n)
    return held, {"dataset": "photos", "split": "held-out crops (fixed seed)", "max_scale": 4}
  n = 64 if n is None else n
  if FLAGS.dataset == "folder":
    paths = img_lib.list_images(FLAGS.folder, flag="--folder")[:n]
    return (img_lib.load_images(FLAGS.folder, paths, size, FLAGS.fit),
            {"dataset": "folder", "folder": os.path.abspath(FLAGS.folder), "fit": FLAGS.fit})
  if not FLAGS.tfds_name:
    raise ValueError("--dataset tfds needs --tfds_name (e.g. imagenet2012), got none")
  from jaxtok.data import pipeline, tfds_source  # pylint: disable=g-import-not-at-top
  src = tfds_source.source(FLAGS.tfds_name, split=FLAGS.split, data_dir=FLAGS.data_dir)
  return (pipeline.eval_images(src, image_size=size, count=n),
          {"dataset": "tfds", "name": FLAGS.tfds_name, "split": FLAGS.split})


def token_counts(tokenizer, stored_eval) -> list[int | None]:
  k = tokenizer.max_tokens
  if FLAGS.token_counts:
    try:
      counts = [int(c) for c in FLAGS.token_counts.split(",") if c.strip()]
    except ValueError:
      raise ValueError(f"--token_counts must be comma-separated ints, got {FLAGS.token_counts!r}") from None
    return sorted({cli.check_num_tokens(tokenizer, c, flag="--token_counts") for c in counts})
  if stored_eval and tokenizer.config.get("name") != "vqgan":
    return sorted({cli.check_num_tokens(tokenizer, int(c), flag="config.eval.token_counts")
                   for c in stored_eval})
  return [k]


def evaluate_tokenizer() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxtok.eval import checkpoints, fid_stats  # pylint: disable=g-import-not-at-top
  from jaxtok.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from jaxtok.metrics import codebook as codebook_lib  # pylint: disable=g-import-not-at-top
  from jaxtok.metrics import fid as fid_lib  # pylint: disable=g-import-not-at-top
  from jaxtok.metrics import pfid as pfid_lib  # pylint: disable=g-import-not-at-top
  from jaxtok.metrics import plots  # pylint: disable=g-import-not-at-top
  from jaxtok.metrics import rate_distortion as rd  # pylint: disable=g-import-not-at-top

  config = FLAGS.config
  if config is None:
    config = ckpt_lib.read_config(FLAGS.checkpoint) if FLAGS.checkpoint else None
  tokenizer, params, info = checkpoints.load_tokenizer(config, FLAGS.checkpoint, use_ema=FLAGS.use_ema)
  stored_eval = None
  if config is not None and hasattr(config, "get") and config.get("eval"):
    stored_eval = config.get("eval").get("token_counts")
  counts = token_counts(tokenizer, stored_eval)
  run_data = config.get("data") if hasattr(config, "get") and "model" in config else None
  images, data_info = dataset_images(tokenizer.image_size, run_data)
  features = fid_stats.inception_features(FLAGS.inception_weights) if FLAGS.inception_weights else None
  bs = FLAGS.batch_size
  key = jax.random.key(FLAGS.seed)
  real_u8 = img_lib.to_uint8(images)
  real_stats = fid_stats.stats_of_batches(
      (images[i:i + bs] for i in range(0, len(images), bs)), features) if features else None

  # PSNR/SSIM from the training loop's own scorer (same chunks, rounding and key: same numbers).
  from jaxtok.train import evaluate as scorer  # pylint: disable=g-import-not-at-top
  scores, recons_u8 = scorer.evaluate(scorer.reconstruct_fn(tokenizer, params, seed=FLAGS.seed),
                                      images, counts)
  per_count, recons = {}, {}
  for k in counts:
    row = dict(scores["all" if k is None else str(k)])
    rec = recons_u8["all" if k is None else str(k)].astype(np.float32) / 255.0
    recons[k] = rec
    if features is not None:
      rec_stats = fid_stats.stats_of_batches((rec[i:i + bs] for i in range(0, len(rec), bs)), features)
      row["rfid"] = fid_lib.fid_from_stats(rec_stats, real_stats)
    per_count[str(k)] = row
    log.info("tokens=%s: %s", k, row)

  report = {"checkpoint": info["path"], "weights": info["weights"], "step": info["step"],
            "tokenizer": info["model_config"].get("name"), "num_images": int(len(images)),
            "image_size": int(tokenizer.image_size), **data_info, "token_counts": counts,
            "per_token_count": per_count,
            "fid_features": "FID Inception-v3 (pool3, 2048-d)" if features else None}
  size = tokenizer.vocab_size
  full = tokenizer.max_tokens
  if size is not None:
    usage = codebook_lib.CodebookUsage(size)
    usage.update(cli.batched(lambda x: tokenizer.encode(params, jnp.asarray(x)).tokens, images, bs))
    report["codebook"] = {"codebook_size": size, **usage.result()}
    if features is not None:
      book = checkpoints.codebook_vectors(tokenizer, params)
      perturbation = pfid_lib.Perturbation(p=FLAGS.pfid_p, k=FLAGS.pfid_k, fraction=FLAGS.pfid_fraction)
      report["pfid"] = pfid_lib.pfid(
          (images[i:i + bs] for i in range(0, len(images), bs)),
          encode=lambda x: tokenizer.encode(params, x).tokens,
          decode=lambda t: tokenizer.decode(params, t, rng=key), features=features, codebook=book,
          perturbation=perturbation, rng=jax.random.fold_in(key, 1), reference=real_stats,
          cosine=bool(tokenizer.config.get("use_l2_norm", False)))
    n_codec = min(FLAGS.codec_images, len(images))
    if n_codec > 0:
      rows = rd.rate_distortion_table(list(real_u8[:n_codec]),
                                      {k or full: list(img_lib.to_uint8(recons[k][:n_codec]))
                                       for k in counts}, size)
      report["rate_distortion"] = rows
      plots.rate_distortion(rows, os.path.join(FLAGS.out, "rate_distortion.png"),
                            title=f"{report['tokenizer']}: bytes per image at equal PSNR")
  plots.psnr_vs_tokens([k or full for k in counts], [per_count[str(k)]["psnr"] for k in counts],
                       os.path.join(FLAGS.out, "psnr_vs_tokens.png"),
                       ssim=[per_count[str(k)]["ssim"] for k in counts]
                       if all("ssim" in per_count[str(k)] for k in counts) else None)
  n_show = min(8, len(images))
  rows_img = [real_u8[:n_show]] + [img_lib.to_uint8(recons[k][:n_show]) for k in counts]
  img_lib.save_png(os.path.join(FLAGS.out, "reconstructions.png"),
                   img_lib.grid(np.concatenate(rows_img), columns=n_show),
                   scale=max(1, 64 // tokenizer.image_size))
  return report


def evaluate_samples() -> dict:
  from jaxtok.eval import fid_stats  # pylint: disable=g-import-not-at-top
  if not FLAGS.inception_weights:
    raise ValueError("gFID (--samples) needs --inception_weights: the FID Inception weights file "
                     "(never downloaded)")
  if not FLAGS.reference:
    raise ValueError("gFID (--samples) needs --reference: a folder of real images or a statistics .npz")
  features = fid_stats.inception_features(FLAGS.inception_weights)
  samples = fid_stats.stats_of_folder(FLAGS.samples, features, batch_size=FLAGS.batch_size,
                                      flag="--samples")
  if os.path.isdir(FLAGS.reference) and FLAGS.save_reference_stats:
    ref_stats = fid_stats.stats_of_folder(FLAGS.reference, features, batch_size=FLAGS.batch_size,
                                          flag="--reference")
    fid_stats.save_stats(FLAGS.save_reference_stats, ref_stats)
    reference = (ref_stats.mean, ref_stats.covariance(), ref_stats.count)
  else:
    reference = fid_stats.reference_stats(FLAGS.reference, features, batch_size=FLAGS.batch_size)
  return {"gfid": fid_stats.fid_against(samples, reference), "num_samples": samples.count,
          "num_reference": reference[2], "samples": os.path.abspath(FLAGS.samples),
          "reference": os.path.abspath(FLAGS.reference),
          "fid_features": "FID Inception-v3 (pool3, 2048-d)"}


def main(argv) -> dict:
  cli.parse(FLAGS, argv, __doc__)
  if not FLAGS.out:
    raise ValueError("--out is required: the folder for metrics.json and the plots")
  os.makedirs(FLAGS.out, exist_ok=True)
  report = evaluate_samples() if FLAGS.samples else evaluate_tokenizer()
  with open(os.path.join(FLAGS.out, "metrics.json"), "w") as f:
    json.dump(report, f, indent=2, default=str)
  print(json.dumps({k: v for k, v in report.items() if k in ("per_token_count", "codebook", "gfid")},
                   default=str), flush=True)
  return report


if __name__ == "__main__":
  main(sys.argv)
