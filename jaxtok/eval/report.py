"""The evaluation reports of tools/evaluate.py: a tokenizer on a dataset, or generator samples (gFID).

`evaluate_tokenizer`: for each token count k, PSNR and SSIM of the 8-bit reconstructions (the
training loop's own scorer, `jaxtok.train.evaluate.evaluate`: the same held-out set, chunks and
rounding give the same numbers as the run's final_metrics.json) and, with Inception weights, rFID.
At all K tokens: codebook usage / perplexity / entropy, pFID (RobusTok perturbation) and, for
discrete tokens, rate-distortion against JPEG and WebP. Writes rate_distortion.png,
psnr_vs_tokens.png and reconstructions.png into `out`.
`evaluate_samples`: gFID of a folder of generated images against real images or saved statistics.
FIDs are computed only from a user-supplied Inception weights file: nothing is downloaded.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from jaxtok.eval import cli
from jaxtok.eval import images as img_lib

log = logging.getLogger(__name__)
DATASETS = ("photos", "folder", "tfds")


def dataset_images(dataset: str, size: int, run_data: Any = None, *, num_images: int | None = None,
                   folder: str | None = None, fit: str = "crop", tfds_name: str | None = None,
                   split: str = "validation", data_dir: str | None = None) -> tuple[np.ndarray, dict]:
  """float32 [N, size, size, 3] evaluation images of `dataset` (one of DATASETS), and a description.

  run_data: the `data` config of the training run that wrote the checkpoint (None for other
  checkpoints). With dataset "photos" it defines the held-out set exactly as the run's own
  evaluation did (`pipeline.heldout_images`: data.heldout crops at data.max_scale), so this report
  and the training job give the same numbers; `num_images` changes only the count.
  """
  n = num_images
  if n is not None and n < 2:
    raise ValueError(f"--num_images must be >= 2, got {n}")
  if dataset == "photos":
    from jaxtok.data import pipeline  # pylint: disable=g-import-not-at-top
    data = dict(run_data.to_dict() if hasattr(run_data, "to_dict") else run_data or {})
    own = bool(data) and (data.get("source") or "photos") == "photos"
    if not own:  # no training run behind the checkpoint: the fixed default held-out crops
      data, n = {"source": "photos", "max_scale": 4}, (64 if n is None else n)
    data["image_size"] = size
    split = "the run's held-out crops (its data config)" if own else "held-out crops (fixed seed)"
    return pipeline.heldout_images(data, count=n), {"dataset": "photos", "split": split,
                                                    "max_scale": int(data.get("max_scale") or 4)}
  from jaxtok.data import image_sets  # pylint: disable=g-import-not-at-top
  n = 64 if n is None else n
  if dataset == "folder":
    images, _, meta = image_sets.folder_images(folder, size, n, fit)
    return images, {"dataset": "folder", "folder": meta["folder"], "fit": fit}
  if not tfds_name:
    raise ValueError("--dataset tfds needs --tfds_name (e.g. imagenet2012), got none")
  images, _, _ = image_sets.tfds_images(tfds_name, split, data_dir, size, n)
  return images, {"dataset": "tfds", "name": tfds_name, "split": split}


def token_counts(tokenizer: Any, requested: str | None, stored_eval: Any) -> list[int | None]:
  """The token counts to evaluate: `requested` ("4,8,16"), else the run's eval.token_counts, else [K]."""
  k = tokenizer.max_tokens
  if requested:
    try:
      counts = [int(c) for c in requested.split(",") if c.strip()]
    except ValueError:
      raise ValueError(f"--token_counts must be comma-separated ints, got {requested!r}") from None
    return sorted({cli.check_num_tokens(tokenizer, c, flag="--token_counts") for c in counts})
  if stored_eval and tokenizer.config.get("name") != "vqgan":
    return sorted({cli.check_num_tokens(tokenizer, int(c), flag="config.eval.token_counts")
                   for c in stored_eval})
  return [k]


def evaluate_tokenizer(config: Any, checkpoint: str, *, out: str, dataset: str = "photos",
                       use_ema: bool = True, requested_counts: str | None = None,
                       num_images: int | None = None, folder: str | None = None, fit: str = "crop",
                       tfds_name: str | None = None, split: str = "validation",
                       data_dir: str | None = None, inception_weights: str | None = None,
                       pfid_p: float = 0.1, pfid_k: int = 5, pfid_fraction: float = 1.0,
                       codec_images: int = 16, seed: int = 0, batch_size: int = 32) -> dict:
  """The tokenizer report (a JSON-able dict); the arguments are tools/evaluate.py's flags.

  config: a config (training or model) or None: the checkpoint's stored config.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxtok.eval import checkpoints, fid_stats  # pylint: disable=g-import-not-at-top
  from jaxtok.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from jaxtok.metrics import codebook as codebook_lib  # pylint: disable=g-import-not-at-top
  from jaxtok.metrics import fid as fid_lib  # pylint: disable=g-import-not-at-top
  from jaxtok.metrics import pfid as pfid_lib  # pylint: disable=g-import-not-at-top
  from jaxtok.metrics import plots  # pylint: disable=g-import-not-at-top
  from jaxtok.metrics import rate_distortion as rd  # pylint: disable=g-import-not-at-top

  if config is None:
    config = ckpt_lib.read_config(checkpoint) if checkpoint else None
  tokenizer, params, info = checkpoints.load_tokenizer(config, checkpoint, use_ema=use_ema)
  from jaxtok.data import photo_captions  # pylint: disable=g-import-not-at-top
  photo_captions.refuse_captionless(info["model_config"], "tools/evaluate.py")
  stored_eval = None
  if config is not None and hasattr(config, "get") and config.get("eval"):
    stored_eval = config.get("eval").get("token_counts")
  counts = token_counts(tokenizer, requested_counts, stored_eval)
  run_data = config.get("data") if hasattr(config, "get") and "model" in config else None
  images, data_info = dataset_images(dataset, tokenizer.image_size, run_data, num_images=num_images,
                                     folder=folder, fit=fit, tfds_name=tfds_name, split=split,
                                     data_dir=data_dir)
  features = fid_stats.inception_features(inception_weights) if inception_weights else None
  bs = batch_size
  key = jax.random.key(seed)
  real_u8 = img_lib.to_uint8(images)
  real_stats = fid_stats.stats_of_batches(
      (images[i:i + bs] for i in range(0, len(images), bs)), features) if features else None

  # PSNR/SSIM from the training loop's own scorer (same chunks, rounding and key: same numbers).
  from jaxtok.train import evaluate as scorer  # pylint: disable=g-import-not-at-top
  scores, recons_u8 = scorer.evaluate(scorer.reconstruct_fn(tokenizer, params, seed=seed),
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
      perturbation = pfid_lib.Perturbation(p=pfid_p, k=pfid_k, fraction=pfid_fraction)
      report["pfid"] = pfid_lib.pfid(
          (images[i:i + bs] for i in range(0, len(images), bs)),
          encode=lambda x: tokenizer.encode(params, x).tokens,
          decode=lambda t: tokenizer.decode(params, t, rng=key), features=features, codebook=book,
          perturbation=perturbation, rng=jax.random.fold_in(key, 1), reference=real_stats,
          cosine=bool(tokenizer.config.get("use_l2_norm", False)))
    n_codec = min(codec_images, len(images))
    if n_codec > 0:
      rows = rd.rate_distortion_table(list(real_u8[:n_codec]),
                                      {k or full: list(img_lib.to_uint8(recons[k][:n_codec]))
                                       for k in counts}, size)
      report["rate_distortion"] = rows
      plots.rate_distortion(rows, os.path.join(out, "rate_distortion.png"),
                            title=f"{report['tokenizer']}: bytes per image at equal PSNR")
  plots.psnr_vs_tokens([k or full for k in counts], [per_count[str(k)]["psnr"] for k in counts],
                       os.path.join(out, "psnr_vs_tokens.png"),
                       ssim=[per_count[str(k)]["ssim"] for k in counts]
                       if all("ssim" in per_count[str(k)] for k in counts) else None)
  n_show = min(8, len(images))
  rows_img = [real_u8[:n_show]] + [img_lib.to_uint8(recons[k][:n_show]) for k in counts]
  img_lib.save_png(os.path.join(out, "reconstructions.png"),
                   img_lib.grid(np.concatenate(rows_img), columns=n_show),
                   scale=max(1, 64 // tokenizer.image_size))
  return report


def evaluate_samples(samples: str, reference: str, *, inception_weights: str | None,
                     save_reference_stats: str | None = None, batch_size: int = 32) -> dict:
  """gFID of the images in folder `samples` against `reference` (a folder or a statistics .npz)."""
  from jaxtok.eval import fid_stats  # pylint: disable=g-import-not-at-top
  if not inception_weights:
    raise ValueError("gFID (--samples) needs --inception_weights: the FID Inception weights file "
                     "(never downloaded)")
  if not reference:
    raise ValueError("gFID (--samples) needs --reference: a folder of real images or a statistics .npz")
  features = fid_stats.inception_features(inception_weights)
  sample_stats = fid_stats.stats_of_folder(samples, features, batch_size=batch_size, flag="--samples")
  if os.path.isdir(reference) and save_reference_stats:
    ref_stats = fid_stats.stats_of_folder(reference, features, batch_size=batch_size,
                                          flag="--reference")
    fid_stats.save_stats(save_reference_stats, ref_stats)
    ref = (ref_stats.mean, ref_stats.covariance(), ref_stats.count)
  else:
    ref = fid_stats.reference_stats(reference, features, batch_size=batch_size)
  return {"gfid": fid_stats.fid_against(sample_stats, ref), "num_samples": sample_stats.count,
          "num_reference": ref[2], "samples": os.path.abspath(samples),
          "reference": os.path.abspath(reference),
          "fid_features": "FID Inception-v3 (pool3, 2048-d)"}
