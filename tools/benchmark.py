"""jaxtok benchmarks: measured speed of the library's hot paths, written as markdown rows.

Usage:
  python tools/benchmark.py --suite quantizers [--compare-torch] [--out benchmarks/RESULTS.md]

Each case is timed as the median of `--repeats` calls after a compile/warm-up call, with
`block_until_ready` (JAX) or inside `torch.no_grad()` (PyTorch). Results go to stdout as a markdown
table; with --out they are appended under a heading naming the machine, the date and the command.
vector-quantize-pytorch (the `bench` extra) is imported only with --compare-torch.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def time_call(fn: Callable[[], object], repeats: int, block: Callable[[object], object]) -> float:
  """Median wall time in seconds of `fn()` over `repeats` calls, after one warm-up call."""
  block(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    block(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def jax_time(fn: Callable, *args, repeats: int) -> float:
  compiled = jax.jit(fn)
  return time_call(lambda: compiled(*args), repeats, jax.block_until_ready)


def torch_time(fn: Callable[[], object], repeats: int) -> float:
  import torch
  with torch.no_grad():
    return time_call(fn, repeats, lambda out: out)


def machine_description() -> str:
  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", dev.platform)
  return (f"{platform.machine()} {os.cpu_count()} cores, jax {jax.__version__} on "
          f"{dev.platform} ({kind})")


def quantizer_suite(args) -> list[tuple[str, str, float, str]]:
  """Rows (case, implementation, milliseconds, note)."""
  from jaxtok.quantizers import fsq, lfq, search, vq

  rows = []
  rng = np.random.default_rng(0)
  n, d, k = args.vq_vectors, 16, 4096
  z = jnp.asarray(rng.standard_normal((n, d)), jnp.float32)
  cb = jnp.asarray(rng.standard_normal((k, d)), jnp.float32)
  state = vq.VQState(codebook=cb, cluster_size=jnp.zeros((k,)), embed_sum=jnp.zeros((k, d)),
                     initialized=jnp.array(True))
  case = f"VQ lookup {n}x{d} vs {k} codes"
  t_dense = jax_time(lambda z, c: jnp.dot(z, c.T, precision=jax.lax.Precision.HIGHEST), z, cb,
                     repeats=args.repeats)
  rows.append((case, "dense matmul z @ C^T (reference floor)", t_dense * 1e3, ""))
  t_near = jax_time(lambda z, c: search.nearest(z, c), z, cb, repeats=args.repeats)
  rows.append((case, "jaxtok search.nearest", t_near * 1e3, f"{t_near / t_dense:.2f}x dense"))
  t_vq = jax_time(lambda z: vq.quantize(z, state).indices, z, repeats=args.repeats)
  rows.append((case, "jaxtok vq.quantize (eval)", t_vq * 1e3, f"{t_vq / t_dense:.2f}x dense"))

  big_k = 2**18
  big_cb = jnp.asarray(rng.standard_normal((big_k, d)), jnp.float32)
  zb = z[:1024]
  t_big = jax_time(lambda z, c: search.nearest(z, c), zb, big_cb, repeats=max(2, args.repeats // 3))
  rows.append((f"VQ lookup 1024x{d} vs 2^18 codes", "jaxtok search.nearest (blocked)", t_big * 1e3,
               "never holds more than 2^24 distances"))

  levels = (8, 5, 5, 5)
  zf = jnp.asarray(rng.standard_normal((n, len(levels))), jnp.float32)
  t_fsq = jax_time(lambda z: fsq.quantize(z, levels).codes, zf, repeats=args.repeats)
  rows.append((f"FSQ {levels} on {n} vectors", "jaxtok fsq.quantize", t_fsq * 1e3, ""))

  zl = jnp.asarray(rng.standard_normal((n, 16)), jnp.float32)
  t_lfq = jax_time(lambda z: lfq.quantize(z, entropy_weight=0.0).codes, zl, repeats=args.repeats)
  rows.append((f"LFQ 16 bits on {n} vectors (no entropy)", "jaxtok lfq.quantize", t_lfq * 1e3, ""))

  results = {"vq": t_vq, "fsq": t_fsq, "lfq": t_lfq, "dense": t_dense}
  if args.compare_torch:
    rows += torch_quantizers(args, np.asarray(z), np.asarray(cb), np.asarray(zf), np.asarray(zl),
                             levels, results)
  return rows


def torch_quantizers(args, z, cb, zf, zl, levels, ours) -> list[tuple[str, str, float, str]]:
  import torch
  import vector_quantize_pytorch as vqp

  torch.set_num_threads(os.cpu_count() or 1)
  rows = []
  n, d = z.shape
  k = cb.shape[0]
  model = vqp.VectorQuantize(dim=d, codebook_size=k, decay=0.99).eval()
  with torch.no_grad():
    model._codebook.embed.copy_(torch.from_numpy(cb)[None])
    model._codebook.initted.fill_(True)
  zt = torch.from_numpy(z)[None]
  t = torch_time(lambda: model(zt), args.repeats)
  rows.append((f"VQ lookup {n}x{d} vs {k} codes", f"vector-quantize-pytorch {vqp_version()} VectorQuantize",
               t * 1e3, f"jaxtok vq.quantize is {t / ours['vq']:.1f}x faster"))
  fsq_model = vqp.FSQ(levels=list(levels)).eval()
  zft = torch.from_numpy(zf)[None]
  t = torch_time(lambda: fsq_model(zft), args.repeats)
  rows.append((f"FSQ {tuple(levels)} on {n} vectors", "vector-quantize-pytorch FSQ", t * 1e3,
               f"jaxtok is {t / ours['fsq']:.1f}x faster"))
  lfq_model = vqp.LFQ(dim=zl.shape[1], codebook_size=2**zl.shape[1], entropy_loss_weight=0.0).eval()
  zlt = torch.from_numpy(zl)[None]
  t = torch_time(lambda: lfq_model(zlt), args.repeats)
  rows.append((f"LFQ 16 bits on {n} vectors (no entropy)", "vector-quantize-pytorch LFQ (eval)", t * 1e3,
               f"jaxtok is {t / ours['lfq']:.1f}x faster"))
  return rows


def vqp_version() -> str:
  from importlib.metadata import version
  return version("vector-quantize-pytorch")


SUITES = {"quantizers": quantizer_suite}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--suite", choices=sorted(SUITES), default="quantizers")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--vq-vectors", type=int, default=16384)
  parser.add_argument("--compare-torch", action="store_true",
                      help="also time vector-quantize-pytorch (pip install '.[bench]')")
  parser.add_argument("--out", default=None, help="append the table to this markdown file")
  args = parser.parse_args(argv)
  rows = SUITES[args.suite](args)
  command = "python tools/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
  header = (f"### {args.suite} — {datetime.date.today().isoformat()} — {machine_description()}\n\n"
            f"Command: `{command}`\n\n| case | implementation | ms (median) | note |\n|---|---|---|---|\n")
  table = header + "".join(f"| {c} | {impl} | {ms:.3f} | {note} |\n" for c, impl, ms, note in rows)
  print(table)
  if args.out:
    with open(args.out, "a") as f:
      f.write("\n" + table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
