"""Quantizer comparison at the main job's size (issue 13): one variant per call, from the repo root.

  python benchmarks/quantizer_comparison/compare.py NAME WORKDIR [--steps N]
  python benchmarks/quantizer_comparison/compare.py --table RESULTS_DIR   (markdown table of the JSONs)

Each variant is `configs/onedpiece.py:main` (same data, steps, optimiser, EMA, seed) with only the
bottleneck swapped, using the settings `jaxtok.configs.titok.titok_model` gives that quantizer (the
TiTok release's 12-dim, 4096-id default for the learnt codebooks and the 12-bit sign quantizers; the
main job's (8,8,8,5,5,5) grid for FSQ/RFSQ). It trains with `jaxtok.train.loop.train`, then scores
the EMA weights with `tools/evaluate.py`'s report on the run's 16 held-out crops (the main job's own
PSNR) and on 256 held-out crops (the codebook statistics: usage, entropy over 4,096 tokens), and
writes WORKDIR/comparison.json.
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.getcwd())

# name -> model overrides on top of main_config's model (None = the main job unchanged).
VARIANTS = {
    "fsq": {},
    "vq": dict(quantizer="vq", token_size=12, codebook_size=4096, use_l2_norm=True,
               commitment_cost=0.25),
    "vq_ema_kmeans_restart": dict(quantizer="vq", token_size=12, codebook_size=4096, use_l2_norm=True,
                                  commitment_cost=0.25,
                                  quantizer_options=dict(ema=True, kmeans_init=True,
                                                         dead_code_restart=True)),
    "lfq": dict(quantizer="lfq", token_size=12),
    "bsq": dict(quantizer="bsq", token_size=12),
    "binary": dict(quantizer="binary", token_size=12),
    "rvq": dict(quantizer="rvq", token_size=12, codebook_size=4096, use_l2_norm=True,
                commitment_cost=0.25, quantizer_options=dict(num_quantizers=2)),
    "rfsq": dict(quantizer="rfsq", quantizer_options=dict(num_quantizers=2)),
    # Follow-ups on plain VQ's collapse (one code per position): a better gradient to the encoder,
    # or a codebook-usage loss (MaskGIT / GigaTok entropy, weight 0.1, temperature 0.01).
    "vq_rotation": dict(quantizer="vq", token_size=12, codebook_size=4096, use_l2_norm=True,
                        commitment_cost=0.25, quantizer_options=dict(rotation_trick=True)),
    "vq_entropy": dict(quantizer="vq", token_size=12, codebook_size=4096, use_l2_norm=True,
                       commitment_cost=0.25, quantizer_options=dict(entropy_weight=0.1)),
}


def variant_config(name: str, steps: int | None = None):
  from jaxtok.configs import onedpiece  # pylint: disable=g-import-not-at-top
  if name not in VARIANTS:
    raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {name!r}")
  c = onedpiece.get_config("main")
  with c.unlocked():
    for k, v in VARIANTS[name].items():
      c.model[k] = v
    if steps is not None:
      c.total_steps = steps
      c.optim.warmup_steps = min(c.optim.warmup_steps, max(1, steps // 4))
  return c


def run(name: str, workdir: str, steps: int | None = None) -> dict:
  from jaxtok.eval import report  # pylint: disable=g-import-not-at-top
  from jaxtok.train import loop  # pylint: disable=g-import-not-at-top
  c = variant_config(name, steps)
  t0 = time.time()
  loop.train(c, workdir, show_progress=False)
  train_s = time.time() - t0
  own = report.evaluate_tokenizer(None, workdir, out=os.path.join(workdir, "eval16"), codec_images=0)
  wide = report.evaluate_tokenizer(None, workdir, out=os.path.join(workdir, "eval256"),
                                   num_images=256, codec_images=0)
  out = {"variant": name, "model": {k: (v.to_dict() if hasattr(v, "to_dict") else v)
                                    for k, v in c.model.items()},
         "steps": c.total_steps, "train_seconds": round(train_s, 1),
         "psnr16": {k: v["psnr"] for k, v in own["per_token_count"].items()},
         "ssim16": {k: v["ssim"] for k, v in own["per_token_count"].items()},
         "psnr256": {k: v["psnr"] for k, v in wide["per_token_count"].items()},
         "codebook16": own.get("codebook"), "codebook256": wide.get("codebook")}
  with open(os.path.join(workdir, "comparison.json"), "w") as f:
    json.dump(out, f, indent=2, default=str)
  print("RESULT", json.dumps(out, default=str), flush=True)
  return out


def table(results_dir: str) -> str:
  rows = ["| quantizer | settings | ids per token | PSNR 2 / 4 / 8 / 16 tokens (16 crops) | "
          "PSNR at 16 (256 crops) | codes used (256 crops, 4,096 tokens) | entropy (bits/token) | "
          "train s |", "|---|---|---|---|---|---|---|---|"]
  for name in VARIANTS:
    path = os.path.join(results_dir, name, "comparison.json")
    if not os.path.exists(path):
      continue
    r = json.load(open(path))
    m, cb = r["model"], r["codebook256"]
    settings = ", ".join(f"{k}={v}" for k, v in VARIANTS[name].items() if k != "quantizer") or \
        "main job: fsq_levels=(8,8,8,5,5,5), token_size=6"
    p = r["psnr16"]
    rows.append(f"| {m['quantizer']} | {settings} | {cb['codebook_size']} | "
                f"{' / '.join(f'{p[k]:.2f}' for k in sorted(p, key=int))} | "
                f"{r['psnr256'][max(r['psnr256'], key=int)]:.2f} | "
                f"{round(cb['usage'] * cb['codebook_size'])} | {cb['entropy_bits']:.2f} | "
                f"{r['train_seconds']:.0f} |")
  return "\n".join(rows)


if __name__ == "__main__":
  if sys.argv[1] == "--table":
    print(table(sys.argv[2]))
  else:
    steps = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--steps" else None
    run(sys.argv[1], sys.argv[2], steps)
