"""jaxtok benchmarks: measured speed of the library's hot paths, written as markdown rows.

Usage:
  python tools/benchmark.py --suite quantizers [--compare-torch] [--out benchmarks/RESULTS.md]
  python tools/benchmark.py --suite tokenizers [--models titok_s128,titok_b64] [--batch 8]
  python tools/benchmark.py --suite train [--models main,titok_b64,flextok] [--batch 32]
  python tools/benchmark.py --suite samplers [--skip-ar] [--other-batch 2]
  python tools/benchmark.py --suite samplers --ar-only --ar-size 256x4 --ar-tokens 64 --ar-batch 4
      (GPT, Token-Shuffle s=2 and NAR at one size: tokens/s and model calls per image)
  python tools/benchmark.py --suite data [--batch 32] [--repeats 10]
  python tools/benchmark.py --suite ecar [--other-batch 4] [--repeats 5]
  python tools/benchmark.py --suite gaussian_layton [--batch 4] [--repeats 5]
  python tools/benchmark.py --suite text [--batch 8] [--repeats 4]   (CLIP text, TA-TiTok, MaskGen)
  python tools/benchmark.py --suite speculative [--repeats 3]   (SpecTr, ASSD, ReCAP vs plain)
  python tools/benchmark.py --suite next_x [--other-batch 4] [--repeats 3]   (xAR, Hi-MAR, MAR)
  python tools/benchmark.py --suite resgen [--other-batch 4] [--ar-size 256x4]
      (ResGen beside MaskGIT / MAR; Instella's binary diffusion and binary AR beside the GPT)
  python tools/benchmark.py --suite semantic [--batch 8] [--repeats 5]   (TokenFlow, DualToken, TexTok, TiTok)
  python tools/benchmark.py --suite gpstoken_gen [--other-batch 4] [--repeats 3]   (GPSToken SiT SDE)
  python tools/benchmark.py --suite hf_bpe [--batch 32] [--repeats 10]   (tokenizer.json BPE ids)
  python tools/benchmark.py --suite olmo [--batch 8] [--repeats 5]   (OLMo text tower hidden states)
  python tools/benchmark.py --suite instella_t2i [--other-batch 2] [--repeats 5]   (Instella-T2I T2I nets)
  python tools/benchmark.py --suite kernels [--repeats 6]   (float32 GEMM / conv, XLA beside PyTorch)
  python tools/benchmark.py --compare-official ../1d-tokenizer [--models titok_s128,titok_bl64,rar]
      [--batch 8] [--repeats 2] [--breakdown]   (suite "official": jaxtok beside the PyTorch originals)

Each case is timed as the median of `--repeats` calls after a compile/warm-up call, with
`block_until_ready` (JAX) or inside `torch.no_grad()` (PyTorch); pairs that are compared (jaxtok vs
PyTorch, search vs the dense product) alternate bursts of calls so both see the same machine state
(`time_pair`). Results go to stdout as a markdown
table; with --out they are appended under a heading naming the machine, the date and the command.
vector-quantize-pytorch (the `bench` extra) is imported only with --compare-torch; torch, einops and
omegaconf only with --compare-official (a checkout of bytedance/1d-tokenizer, never part of jaxtok).
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


class Rows(list):
  """Result rows (case, implementation, ms, note) that are also printed to stderr as they arrive, so a
  run cut short by a time limit still shows what it measured."""

  def append(self, row):
    case, impl, ms, note = row
    print(f"[row] {case} | {impl} | {ms:.3f} ms | {note}", file=sys.stderr, flush=True)
    super().append(row)

  def extend(self, rows):
    for row in rows:
      self.append(row)

  def __iadd__(self, rows):
    self.extend(rows)
    return self


_T0 = time.perf_counter()


def stage(msg: str) -> None:
  """Progress line on stderr with the seconds since start, so a run cut short by a time limit shows
  where its time went (start-up, initialisation, compilation, timing)."""
  print(f"[stage] +{time.perf_counter() - _T0:.1f}s {msg}", file=sys.stderr, flush=True)


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


def torch_device() -> str:
  """cuda when JAX runs on a GPU and torch sees one (same device for both), else cpu."""
  import torch
  return "cuda" if jax.devices()[0].platform == "gpu" and torch.cuda.is_available() else "cpu"


def machine_description() -> str:
  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", dev.platform)
  return (f"{platform.machine()} {os.cpu_count()} cores, jax {jax.__version__} on "
          f"{dev.platform} ({kind})")


def time_pair(fn_a: Callable[[], object], block_a: Callable[[object], object],
              fn_b: Callable[[], object], block_b: Callable[[object], object],
              repeats: int, burst: int = 20, settle_s: float = 0.02) -> tuple[float, float]:
  """Median wall times (seconds) of two callables measured in alternating bursts.

  `repeats` rounds, each running back-to-back calls of a, then of b: untimed calls for `settle_s`
  seconds (at least one), then `burst` timed ones. Alternating puts both under the same machine state
  (shared cores drift over minutes). The untimed lead-in absorbs the switch: PyTorch's OpenMP workers
  keep spinning for a while after its last call and slow whatever runs next on the same cores, and our
  own worker threads need waking; a program calling one library in a loop sees neither.
  """
  block_a(fn_a())
  block_b(fn_b())
  times_a, times_b = [], []
  for _ in range(repeats):
    for fn, block, times in ((fn_a, block_a, times_a), (fn_b, block_b, times_b)):
      settle_end = time.perf_counter() + settle_s
      block(fn())
      while time.perf_counter() < settle_end:
        block(fn())
      for _ in range(burst):
        start = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - start)
  return statistics.median(times_a), statistics.median(times_b)


def _codes_and_indices(out):
  # What vector-quantize-pytorch's forward returns too (its losses are zero or skipped in eval).
  return out.codes, out.indices


def quantizer_suite(args) -> list[tuple[str, str, float, str]]:
  """Rows (case, implementation, milliseconds, note)."""
  from jaxtok.quantizers import fsq, lfq, search, vq

  rows = Rows()
  rng = np.random.default_rng(0)
  n, d, k = args.vq_vectors, 16, 4096
  z = jnp.asarray(rng.standard_normal((n, d)), jnp.float32)
  cb = jnp.asarray(rng.standard_normal((k, d)), jnp.float32)
  state = vq.VQState(codebook=cb, cluster_size=jnp.zeros((k,)), embed_sum=jnp.zeros((k, d)),
                     initialized=jnp.array(True))
  case = f"VQ lookup {n}x{d} vs {k} codes"
  dense = jax.jit(lambda z, c: jnp.dot(z, c.T, precision=jax.lax.Precision.HIGHEST))
  near = jax.jit(search.nearest)
  t_dense, t_near = time_pair(lambda: dense(z, cb), jax.block_until_ready, lambda: near(z, cb),
                              jax.block_until_ready, args.repeats)
  rows.append((case, "dense matmul z @ C^T (reference floor)", t_dense * 1e3, ""))
  rows.append((case, "jaxtok search.nearest", t_near * 1e3, f"{t_near / t_dense:.2f}x dense"))
  vq_fn = jax.jit(lambda z: _codes_and_indices(vq.quantize(z, state)))
  t_vq = time_call(lambda: vq_fn(z), args.repeats, jax.block_until_ready)
  rows.append((case, "jaxtok vq.quantize (eval)", t_vq * 1e3, ""))

  big_k = 2**18
  big_cb = jnp.asarray(rng.standard_normal((big_k, d)), jnp.float32)
  zb = z[:1024]
  t_big = jax_time(lambda z, c: search.nearest(z, c), zb, big_cb, repeats=max(2, args.repeats // 3))
  rows.append((f"VQ lookup 1024x{d} vs 2^18 codes", "jaxtok search.nearest (blocked)", t_big * 1e3,
               "never holds more than 2^24 distances"))

  levels = (8, 5, 5, 5)
  # FSQ and LFQ are single elementwise passes: at 16,384 vectors a call takes a fraction of a
  # millisecond and fixed costs (dispatch, waking threads) weigh in; 16x more vectors is a batch of
  # 1024 images x 256 tokens, where the arithmetic dominates.
  elementwise = []
  for m in (n, 16 * n):
    zf = jnp.asarray(rng.standard_normal((m, len(levels))), jnp.float32)
    zl = jnp.asarray(rng.standard_normal((m, 16)), jnp.float32)
    elementwise.append((m, zf, zl))
  fsq_fn = jax.jit(lambda z: _codes_and_indices(fsq.quantize(z, levels)))
  lfq_fn = jax.jit(lambda z: _codes_and_indices(lfq.quantize(z, entropy_weight=0.0)))
  if args.compare_torch:
    rows += torch_quantizers(args, z, cb, lambda: vq_fn(z), elementwise, levels, fsq_fn, lfq_fn)
  else:
    for m, zf, zl in elementwise:
      t_fsq = time_call(lambda: fsq_fn(zf), args.repeats, jax.block_until_ready)
      rows.append((f"FSQ {levels} on {m} vectors", "jaxtok fsq.quantize", t_fsq * 1e3, ""))
      t_lfq = time_call(lambda: lfq_fn(zl), args.repeats, jax.block_until_ready)
      rows.append((f"LFQ 16 bits on {m} vectors (no entropy)", "jaxtok lfq.quantize", t_lfq * 1e3, ""))
  return rows


def torch_quantizers(args, z, cb, vq_call, elementwise, levels, fsq_fn, lfq_fn
                     ) -> list[tuple[str, str, float, str]]:
  """jaxtok vs vector-quantize-pytorch, each pair timed in alternating bursts (`time_pair`)."""
  import torch
  import vector_quantize_pytorch as vqp

  torch.set_num_threads(os.cpu_count() or 1)
  dev = torch_device()

  def torch_block(out):
    if dev == "cuda":
      torch.cuda.synchronize()
    return out

  def to_torch(x):
    return torch.from_numpy(np.array(x))[None].to(dev)

  def compare(case, ours_name, ours_fn, theirs_name, theirs_fn):
    with torch.no_grad():
      t_ours, t_theirs = time_pair(ours_fn, jax.block_until_ready, theirs_fn, torch_block, args.repeats)
    return [(case, ours_name, t_ours * 1e3, ""),
            (case, theirs_name, t_theirs * 1e3, f"jaxtok is {t_theirs / t_ours:.1f}x faster")]

  rows = []
  n, d = z.shape
  k = cb.shape[0]
  model = vqp.VectorQuantize(dim=d, codebook_size=k, decay=0.99).eval().to(dev)
  with torch.no_grad():
    model._codebook.embed.copy_(to_torch(cb))
    model._codebook.initted.fill_(True)
  zt = to_torch(z)
  rows += compare(f"VQ lookup {n}x{d} vs {k} codes (paired)", "jaxtok vq.quantize (eval)", vq_call,
                  f"vector-quantize-pytorch {vqp_version()} VectorQuantize ({dev})", lambda: model(zt))
  fsq_model = vqp.FSQ(levels=list(levels)).eval().to(dev)
  lfq_model = vqp.LFQ(dim=16, codebook_size=2**16, entropy_loss_weight=0.0).eval().to(dev)
  for m, zf, zl in elementwise:
    zft, zlt = to_torch(zf), to_torch(zl)
    rows += compare(f"FSQ {tuple(levels)} on {m} vectors", "jaxtok fsq.quantize", lambda: fsq_fn(zf),
                    f"vector-quantize-pytorch FSQ ({dev})", lambda: fsq_model(zft))
    rows += compare(f"LFQ 16 bits on {m} vectors (no entropy)", "jaxtok lfq.quantize", lambda: lfq_fn(zl),
                    f"vector-quantize-pytorch LFQ, eval ({dev})", lambda: lfq_model(zlt))
  return rows


def vqp_version() -> str:
  from importlib.metadata import version
  return version("vector-quantize-pytorch")


# ---- tokenizers: encode / decode throughput

# name -> (config file, config arg); the official sizes at 256x256 unless the name says otherwise.
TOKENIZER_MODELS = {
    "titok_s128": ("titok", "size=S,tokens=128"),
    "titok_b64": ("titok", "size=B,tokens=64"),
    "titok_l32": ("titok", "size=L,tokens=32"),
    "onedpiece_s256": ("onedpiece", "size=S,tokens=256"),
    "vqgan": ("vqgan", ""),
    "vae_b64": ("vae", "size=B,tokens=64"),
    "flextok": ("flextok", "size=d18_d28"),
    "flextok_d12": ("flextok", "size=d12_d12"),
    "main": ("onedpiece", "main"),
}


def load_config(name: str):
  import importlib
  if name not in TOKENIZER_MODELS:
    raise ValueError(f"--models entries must be in {sorted(TOKENIZER_MODELS)}, got {name!r}")
  module, arg = TOKENIZER_MODELS[name]
  return importlib.import_module(f"jaxtok.configs.{module}").get_config(arg or None)


def _model_names(args, default: str) -> list[str]:
  return [m for m in (args.models or default).split(",") if m]


def tokenizer_suite(args) -> list[tuple[str, str, float, str]]:
  """Encode and decode throughput (images/s) per model at --batch, parameters in --dtype."""
  from jaxtok import tokenizers

  rows = Rows()
  for name in _model_names(args, "titok_s128,titok_b64,vqgan"):
    _recording_failure(rows, f"{name}, batch {args.batch}", "jaxtok",
                       lambda name=name: _tokenizer_one(name, args, rows))
  return rows


def _recording_failure(rows, case, impl, fn) -> None:
  """Runs fn(); a failure (e.g. out of memory at this batch) becomes a NaN row naming the error."""
  try:
    fn()
  except Exception as err:  # noqa: BLE001 -- record and go on with the next model.
    rows.append((case, impl, float("nan"),
                 f"failed: {type(err).__name__}: {str(err).splitlines()[0][:160]}"))


def _tokenizer_one(name, args, rows):
  """Appends the encode row as soon as it is measured, then the decode row."""
  from jaxtok import tokenizers
  stage(f"{name}: building")
  c = load_config(name)
  if args.dtype:
    c.model.dtype = args.dtype
  tok = tokenizers.build(c.model)
  params = tok.init(jax.random.key(0))
  s = tok.image_size or int(c.data.image_size)
  images = jnp.asarray(np.random.default_rng(0).random((args.batch, s, s, 3)), jnp.float32)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  jax.block_until_ready(params)
  stage(f"{name}: initialised {n_params / 1e6:.1f}M params; compiling encode")
  tokens = jax.block_until_ready(tok.encode(params, images).tokens)
  stage(f"{name}: encode compiled and run once; timing")
  t_enc = time_call(lambda: tok.encode(params, images).tokens, args.repeats, jax.block_until_ready)
  note = f"{n_params / 1e6:.1f}M params, {s}px, {tokens.shape[1]} tokens, {c.model.get('dtype', 'float32')}"
  rows.append((f"{name} encode, batch {args.batch}", "jaxtok", t_enc * 1e3,
               f"{args.batch / t_enc:.3g} images/s; {note}"))
  opts = {"num_steps": args.flow_steps} if c.model.name == "flextok" else {}
  stage(f"{name}: compiling decode")
  jax.block_until_ready(tok.decode(params, tokens, **opts))
  stage(f"{name}: decode compiled and run once; timing")
  t_dec = time_call(lambda: tok.decode(params, tokens, **opts), args.repeats, jax.block_until_ready)
  extra = f"; {args.flow_steps} Euler steps" if opts else ""
  rows.append((f"{name} decode, batch {args.batch}", "jaxtok", t_dec * 1e3,
               f"{args.batch / t_dec:.3g} images/s{extra}"))


# ---- training steps: steps/s, images/s and model FLOPs utilisation

# Dense bf16 peak (TFLOP/s) of accelerators we report MFU on.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def transformer_flops(seq: int, width: int, depth: int, mlp: int) -> float:
  """Forward matmul FLOPs of `depth` pre-LN blocks over `seq` tokens (QKV+out 4W^2, MLP 2WM,
  scores and values 2 S^2 W per token-pair set), multiply-add = 2 FLOPs."""
  per_layer = 2 * seq * (4 * width * width + 2 * width * mlp) + 4 * seq * seq * width
  return float(depth * per_layer)


def analytic_train_flops(c, batch: int) -> float:
  """Training FLOPs per step (forward x 3) of the transformer stacks, from the config alone.

  TiTok / One-D-Piece / VAE: encoder and decoder ViTs over S = 1 + (H/p)^2 + K tokens each.
  FlexTok: encoder (width We, depth De) and rectified-flow decoder (Wd, Dd) each over
  S = N + K tokens, N = (H / 8 / p)^2 latent patches (f8 VAE, p = 2: 256 at 256px) and K = 256
  registers: 3 B [De (2S(12 We^2) + 4 S^2 We) + Dd (2S(12 Wd^2) + 4 S^2 Wd)]
  (d18_d28 at 256px: 4.42 TFLOP per image). Left out, so the MFU is a lower bound: the frozen
  VAE encoder (forward only), the per-sample adaLN modulation Linear(W -> 12W) of the decoder, the
  patch/code projections and the register-causal mask's skipped half of the encoder attention
  (counted in full)."""
  m = c.model
  if m.name in ("titok", "onedpiece", "vae"):
    from jaxtok.nn.vit import vit_size
    g = (int(m.image_size) // int(m.patch_size)) ** 2
    seq = 1 + g + int(m.num_latent_tokens)
    total = 0.0
    for part in ("encoder", "decoder"):
      size = m.get(f"{part}_size")
      w, d, _ = vit_size(size) if size else (m[f"{part}_width"], m[f"{part}_depth"], None)
      total += transformer_flops(seq, int(w), int(d), 4 * int(w))
    return 3.0 * batch * total
  if m.name == "flextok":
    from jaxtok.tokenizers import flextok
    cfg = dict(flextok.CONFIGS[m.size])
    k = int(m.get("num_tokens", cfg.get("num_tokens", 256)))
    lat = int(m.image_size) // 8 if cfg.get("use_vae", True) else int(m.image_size)
    g = (lat // int(cfg.get("patch_size", 2))) ** 2
    enc = transformer_flops(g + k, cfg["enc_width"], cfg["enc_depth"], 4 * cfg["enc_width"])
    dec = transformer_flops(g + k, cfg["dec_width"], cfg["dec_depth"], 4 * cfg["dec_width"])
    return 3.0 * batch * (enc + dec)
  return float("nan")


def train_suite(args) -> list[tuple[str, str, float, str]]:
  """Median step time of the jitted train_step (state donated) on synthetic batches."""
  rows = Rows()
  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", "")
  peak = next((v for k, v in PEAK_TFLOPS.items() if k in kind), None)
  for name in _model_names(args, "main"):
    _recording_failure(rows, f"train {name}, batch {args.batch}", "jaxtok train_step",
                       lambda name=name: rows.append(_train_one(name, args, peak)))
  return rows


def _train_one(name, args, peak):
  from jaxtok import sharding, tokenizers
  from jaxtok.train import optim, state as state_lib, step as step_lib
  stage(f"train {name}: building")
  c = load_config(name)
  if args.dtype:
    c.model.dtype = args.dtype
  batch = args.batch or int(c.data.batch_size)
  c.data.batch_size = batch
  mesh = state_lib.mesh_from_config(c)
  rules = state_lib.rules_from_config(c)
  tok = tokenizers.build(c.model)
  model = state_lib.ModelDef(tok.graphdef, tok.init)
  tx = optim.optimizer_from_config(c.optim, max(int(c.total_steps), int(c.optim.warmup_steps) + 1))
  ema = float(c.get("ema_decay", 0.0))
  init_fn = state_lib.make_init_fn(model, tx, ema=ema > 0)
  _, shardings = state_lib.abstract_train_state(init_fn, jax.random.key(0), mesh, rules)
  state = jax.block_until_ready(jax.jit(init_fn, out_shardings=shardings)(jax.random.key(0)))
  stage(f"train {name}: state initialised; compiling the step")
  train_step = step_lib.make_train_step(model, c.get("loss"), tx, state_shardings=shardings,
                                        ema_decay=ema)
  s = int(c.data.image_size)
  images = jnp.asarray(np.random.default_rng(0).random((batch, s, s, 3)), jnp.float32)
  images = jax.device_put(images, sharding.batch_sharding(mesh, 4, rules))
  rng = jax.random.key(1)
  box = [state]

  def one():
    box[0], metrics = train_step(box[0], images, rng)
    return metrics

  jax.block_until_ready(one())
  stage(f"train {name}: step compiled and run once; timing")
  t = time_call(one, args.repeats, jax.block_until_ready)
  flops = analytic_train_flops(c, batch)
  note = f"{1 / t:.2f} steps/s, {batch / t:.1f} images/s, {c.model.get('dtype', 'float32')}"
  if peak and np.isfinite(flops):
    note += f"; {flops / 1e12:.2f} TFLOP/step (analytic), MFU {flops / t / (peak * 1e12) * 100:.1f}%"
  return (f"train {name}, batch {batch}", "jaxtok train_step", t * 1e3, note)


# ---- samplers: tokens/s

def _ar_size(spec: str) -> tuple[int, int, int]:
  """(width, depth, heads) of --ar-size WIDTHxDEPTH (heads: width / 64)."""
  try:
    width, depth = (int(v) for v in spec.lower().split("x"))
  except ValueError:
    raise SystemExit(f"--ar-size must be WIDTHxDEPTH like 768x12, got {spec!r}") from None
  if width % 64 or depth < 1:
    raise SystemExit(f"--ar-size: width must be a multiple of 64 and depth >= 1, got {spec!r}")
  return width, depth, width // 64


def sampler_suite(args) -> list[tuple[str, str, float, str]]:
  """AR with KV cache vs recomputing the prefix (12 layers, width 768, batch 16, 256 tokens by
  default), Token-Shuffle and NAR at the same size, then the other samplers' tokens/s."""
  from flax import nnx
  from jaxtok.generators import gpt
  from jaxtok.samplers import autoregressive as ar

  rows = Rows()
  if args.skip_ar:
    _other_samplers(args, rows)
    return rows
  b, n, vocab = args.ar_batch, args.ar_tokens, 4096
  width, depth, heads = _ar_size(args.ar_size)
  size = f"{depth}x{width}"
  model = gpt.GPT(codebook_size=vocab, seq_len=n, num_classes=1000, width=width, depth=depth,
                  heads=heads, dtype=jnp.dtype(args.dtype or "float32"), rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  prompt = jnp.full((b, 1), vocab + 1, jnp.int32)  # class 1's id

  @jax.jit
  def kv_sample(params, rng):
    m = nnx.merge(graphdef, params)
    return ar.sample(rng, m.prefill, m.step, m.init_cache(b), prompt, num_tokens=n)

  t_kv = time_call(lambda: kv_sample(params, jax.random.key(0)), max(1, args.repeats // 3),
                   jax.block_until_ready)
  rows.append((f"AR sample {n} tokens, batch {b}, {size}", "KV cache (lax.scan)", t_kv * 1e3,
               f"{b * n / t_kv:.0f} tokens/s, {n} model calls per image"))
  _grid_ar_rows(args, rows, t_kv, prompt, size, dict(
      codebook_size=vocab, seq_len=n, num_classes=1000, width=width, depth=depth, heads=heads,
      dtype=jnp.dtype(args.dtype or "float32")))

  # Recompute: every step runs the full static-shape forward over all n positions, so the whole
  # sampler costs n of these forwards; time one and multiply (the sampler loop adds nothing).
  @jax.jit
  def full_forward(params, seq):
    return nnx.merge(graphdef, params)(seq)[:, -1]

  seq = jnp.zeros((b, n), jnp.int32)
  t_fwd = time_call(lambda: full_forward(params, seq), args.repeats, jax.block_until_ready)
  t_re = t_fwd * n
  rows.append((f"AR sample {n} tokens, batch {b}, {size}", "recompute prefix each step",
               t_re * 1e3, f"{b * n / t_re:.3g} tokens/s ({n} x {t_fwd * 1e3:.1f} ms full forward); "
               f"KV cache is {t_re / t_kv:.1f}x faster"))
  if not args.ar_only:
    _other_samplers(args, rows)
  return rows


def _grid_ar_rows(args, rows: Rows, t_gpt: float, prompt, size: str, cfg: dict) -> None:
  """Token-Shuffle (s = 2) and NAR rows beside the GPT's KV-cache row: the same trunk size, tokens,
  batch and prompt; tokens/s, model calls per image, and the speed-up over the GPT's row."""
  from flax import nnx
  from jaxtok.generators import nar as nar_lib
  from jaxtok.generators import token_shuffle as ts_lib
  from jaxtok.samplers import autoregressive as ar
  from jaxtok.samplers import neighbor

  b, n = prompt.shape[0], cfg["seq_len"]
  ts = ts_lib.TokenShuffle(shuffle=2, **cfg, rngs=nnx.Rngs(0))
  nar = nar_lib.NAR(**cfg, rngs=nnx.Rngs(0))
  samplers = {
      "Token-Shuffle s=2 (KV cache, windows of 4)": (ts, ts.num_windows, lambda m, rng: m.tokens_from_windows(
          ar.sample(rng, m.prefill, m.step, m.init_cache(b), prompt, num_tokens=m.num_windows))),
      "NAR (KV cache, one call per diagonal)": (nar, neighbor.num_model_calls(nar.diag),
                                                lambda m, rng: neighbor.sample(
          rng, m.prefill, m.step, m.init_cache(b), prompt, diagonals=m.diag)),
  }
  for impl, (model, calls, body) in samplers.items():
    graphdef, params = nnx.split(model)
    run = jax.jit(lambda params, rng, graphdef=graphdef, body=body: body(nnx.merge(graphdef, params), rng))
    stage(f"timing {impl}")
    t = time_call(lambda: run(params, jax.random.key(0)), max(1, args.repeats // 3),
                  jax.block_until_ready)
    rows.append((f"AR sample {n} tokens, batch {b}, {size}", impl, t * 1e3,
                 f"{b * n / t:.0f} tokens/s, {calls} model calls per image; {t_gpt / t:.1f}x the GPT "
                 f"row's tokens/s"))


def _other_samplers(args, rows: Rows) -> None:
  """Appends the MaskGIT, masked-diffusion, MAR and rectified-flow rows to `rows`."""
  from flax import nnx
  from jaxtok.generators import bert
  from jaxtok.generators import mar as mar_lib
  from jaxtok.samplers import flow, mar, maskgit, masked_diffusion, schedules

  b, k, vocab = args.other_batch or args.ar_batch, 64, 4096
  m = bert.MaskGITTransformer(codebook_size=vocab, seq_len=k, num_classes=1000, width=768, depth=12,
                              heads=12, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(m)
  mask_id = m.mask_id
  labels = jnp.zeros((b,), jnp.int32)

  @jax.jit
  def mg(params, rng):
    model = nnx.merge(graphdef, params)
    start = jnp.full((b, k), mask_id, jnp.int32)
    return maskgit.sample(rng, lambda t: model(t, labels), start, mask_id=mask_id, steps=8)[0]

  reps = max(1, args.repeats // 3)
  t = time_call(lambda: mg(params, jax.random.key(0)), reps, jax.block_until_ready)
  rows.append((f"MaskGIT {k} tokens, 8 steps, batch {b}, 12x768", "maskgit.sample", t * 1e3,
               f"{b * k / t:.0f} tokens/s"))

  # Masked diffusion on the same bidirectional network: first-hitting makes one call per token
  # (K calls), the ancestral sampler one call per step.
  start = jnp.full((b, k), mask_id, jnp.int32)

  @jax.jit
  def fhs(params, rng):
    model = nnx.merge(graphdef, params)
    return masked_diffusion.first_hitting(rng, lambda t: model(t, labels), start, mask_id=mask_id)[0]

  t = time_call(lambda: fhs(params, jax.random.key(0)), reps, jax.block_until_ready)
  rows.append((f"masked diffusion {k} tokens, batch {b}, 12x768", "first_hitting (K model calls)",
               t * 1e3, f"{b * k / t:.0f} tokens/s"))

  @jax.jit
  def anc(params, rng):
    model = nnx.merge(graphdef, params)
    return masked_diffusion.ancestral(rng, lambda t: model(t, labels), start, mask_id=mask_id,
                                      steps=16)

  t = time_call(lambda: anc(params, jax.random.key(0)), reps, jax.block_until_ready)
  rows.append((f"masked diffusion {k} tokens, batch {b}, 12x768", "ancestral, 16 steps", t * 1e3,
               f"{b * k / t:.0f} tokens/s"))

  # MAR: 64 continuous 16-dim tokens, 16 iterations, flow head (3 x 1024) with DiSA 50 -> 5 steps
  # against a constant 50.
  mar_model = mar_lib.MAR(token_dim=16, seq_len=k, num_classes=1000, width=768, depth=12, heads=12,
                          rngs=nnx.Rngs(0))
  mgraph, mparams = nnx.split(mar_model)

  def mar_fn(head_steps):
    @jax.jit
    def run(params, rng):
      model = nnx.merge(mgraph, params)
      head = flow.flip_time(lambda x, t, z: model.head(x, jnp.full((x.shape[0],), t), z))
      return mar.sample(rng, model.condition, head, batch=b, num_tokens=k, token_dim=16, steps=16,
                        head_steps=head_steps, cond=labels).tokens
    return run

  for name, hs in (("constant 50 head steps", 50),
                   ("DiSA linear 50 -> 5 head steps", schedules.disa_steps("linear", 16, 50, 5))):
    fn = mar_fn(hs)
    t = time_call(lambda: fn(mparams, jax.random.key(0)), reps, jax.block_until_ready)
    rows.append((f"MAR {k} tokens x 16 dims, 16 iterations, batch {b}, 12x768", name, t * 1e3,
                 f"{b * k / t:.0f} tokens/s"))

  # Rectified flow over the whole token sequence at once: the same 12x768 network reads all 64 noisy
  # tokens (no mask) and its flow head gives the velocity of each; 25 Euler or Heun steps, and Euler
  # with classifier-free guidance (conditional and null-class halves as one 2B batch).
  def flow_fn(method, guided):
    @jax.jit
    def run(params, rng):
      model = nnx.merge(mgraph, params)

      def velocity(x, t, cond):  # x [B', K, 16]; B' = 2B under guidance
        z = model.condition(x, jnp.zeros(x.shape[:2], bool), cond)
        v = model.head(x.reshape(-1, 16), jnp.full((x.shape[0] * k,), t), z.reshape(x.shape[0] * k, -1))
        return v.reshape(x.shape)

      noise = jax.random.normal(rng, (b, k, 16))
      extra = dict(uncond=jnp.full((b,), -1, jnp.int32), cfg_scale=2.0) if guided else {}
      return flow.sample(flow.flip_time(velocity), noise, labels, steps=25, method=method, **extra)
    return run

  for name, method, guided in (("Euler, 25 steps", "euler", False), ("Heun, 25 steps", "heun", False),
                               ("Euler, 25 steps, CFG 2.0", "euler", True)):
    fn = flow_fn(method, guided)
    t = time_call(lambda: fn(mparams, jax.random.key(0)), reps, jax.block_until_ready)
    evals = 25 * (2 if method == "heun" else 1) * (2 if guided else 1)
    rows.append((f"rectified flow {k} tokens x 16 dims, batch {b}, 12x768", f"flow.sample {name}",
                 t * 1e3, f"{b * k / t:.0f} tokens/s; {evals} network passes per sample"))


# ---- data: host-side resize and input pipelines (images/s, batches/s)

# The CPU train step of the main job, from benchmarks/RESULTS.md "Training steps" (2026-11-23,
# `--suite train --models main --repeats 20`): the rate the main job's input must keep up with.
MAIN_TRAIN_STEP_MS = 139.8


def data_suite(args) -> list[tuple[str, str, float, str]]:
  """Resize at ImageNet photo sizes, and batches/s of the input pipelines against the train step."""
  from jaxtok.data import preprocess as pp

  rows = Rows()
  rng = np.random.default_rng(0)
  ident = lambda out: out  # noqa: E731 -- numpy results are ready when returned
  for size in args.data_sizes.split(","):
    ww, hh = (int(v) for v in size.lower().split("x"))
    image = rng.integers(0, 256, (hh, ww, 3), np.uint8)
    t = time_call(lambda: pp.center_crop(pp.resize_short(image, 256), 256), args.repeats, ident)
    rows.append((f"resize_short + center_crop {ww}x{hh} uint8 -> 256", "preprocess.resize", t * 1e3,
                 f"{1 / t:.1f} images/s"))
    if hh * ww <= 4_000_000:
      # The one-step contraction resize used to run, with numpy's pairwise contraction order (issue
      # 12 measured it unoptimised: 12 s at 2000x1500, minutes at 500x375). Dense, so skipped for
      # large photos.
      out = (256, int(round(ww * 256 / hh)))
      wy, wx = pp.resize_weights(hh, out[0]), pp.resize_weights(ww, out[1])
      t = time_call(lambda: np.einsum("ij,jkc,lk->ilc", wy, image.astype(np.float32), wx,
                                      optimize=True), max(1, args.repeats // 3), ident)
      rows.append((f"resize {ww}x{hh} uint8 -> {out[1]}x{out[0]}", "np.einsum(optimize=True), dense",
                   t * 1e3, f"{1 / t:.1f} images/s; the old one-step contraction, path-optimised"))
  rows += _main_job_input(args)
  rows += _imagenet_pipeline(args, rng)
  return rows


def _main_job_input(args) -> list[tuple[str, str, float, str]]:
  """The main job's training input (configs/onedpiece.py:main): PhotoCrops batches, as the loop
  draws them, against the train step that consumes them."""
  from jaxtok.data import photos
  c = load_config("main")
  size, batch = int(c.data.image_size), int(args.batch or c.data.batch_size)
  train, _ = photos.load_photos(size, 0, int(c.data.max_scale))
  crops = photos.PhotoCrops(train, image_size=size, global_batch=batch, seed=0,
                            max_scale=int(c.data.max_scale))
  t = time_call(lambda: next(crops), max(args.repeats, 20), lambda out: out)
  return [(f"main job input: PhotoCrops {size}px, batch {batch}", "photos.PhotoCrops", t * 1e3,
           f"{1 / t:.0f} batches/s, {batch / t:.0f} images/s; the train step takes "
           f"{MAIN_TRAIN_STEP_MS} ms ({1e3 / MAIN_TRAIN_STEP_MS:.2f} steps/s): input = "
           f"{t * 1e3 / MAIN_TRAIN_STEP_MS * 100:.1f}% of a step")]


class _JpegSource:
  """Random access over JPEG bytes, as tfds stores ImageNet: {"image": bytes, "label": int32}."""

  def __init__(self, blobs):
    self.blobs = blobs

  def __len__(self):
    return len(self.blobs)

  def __getitem__(self, i):
    return {"image": self.blobs[i], "label": np.int32(i)}


def _imagenet_pipeline(args, rng) -> list[tuple[str, str, float, str]]:
  """The tfds path's grain pipeline on ImageNet-sized JPEGs (500x375) -> 256, batches of 32: each
  batch timed after the first (which starts grain's threads), over max(5, repeats) batches."""
  import io
  from PIL import Image
  from jaxtok.data import pipeline
  blobs = []
  for _ in range(64):
    # Smooth random images compress like photographs (noise would make the JPEGs 10x larger).
    small = rng.integers(0, 256, (24, 32, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(buf, "JPEG", quality=90)
    blobs.append(buf.getvalue())
  batch = args.batch or 32
  rows = []
  for augment in ("random_resized_crop", "random_crop"):
    for threads in (0, 2):
      pipe = pipeline.Pipeline(_JpegSource(blobs), batch_size=batch, seed=0, shard=(0, 1),
                               preprocess=pipeline.image_preprocess(256, augment=augment),
                               num_threads=threads)
      next(pipe)
      n = max(5, args.repeats)
      start = time.perf_counter()
      for _ in range(n):
        next(pipe)
      t = (time.perf_counter() - start) / n
      rows.append((f"grain pipeline, JPEG 500x375 -> {augment} 256, batch {batch}",
                   f"pipeline.Pipeline, {threads} threads", t * 1e3,
                   f"{1 / t:.2f} batches/s, {batch / t:.0f} images/s (decode + resize + crop + flip)"))
  return rows


# ---- against the originals: bytedance/1d-tokenizer TiTok and RAR, same configs, random weights

# The released TiTok configs (configs/infer/TiTok/*.yaml of 1d-tokenizer) and jaxtok's equivalents.
# S-128 is the legacy two-stage model: ViT decoder -> proxy-code logits -> MaskGIT-VQGAN pixel decoder.
OFFICIAL_TITOK = {
    "titok_s128": dict(
        official=dict(codebook_size=4096, token_size=12, use_l2_norm=True, commitment_cost=0.25,
                      vit_enc_model_size="small", vit_dec_model_size="small", vit_enc_patch_size=16,
                      vit_dec_patch_size=16, num_latent_tokens=128, finetune_decoder=True),
        ours=dict(config="size=S,tokens=128,recipe=two_stage", legacy_reshape=True,
                  decoder_head="proxy_codes")),
    "titok_bl64": dict(
        official=dict(codebook_size=8192, token_size=64, use_l2_norm=False, commitment_cost=0.25,
                      vit_enc_model_size="base", vit_dec_model_size="large", vit_enc_patch_size=16,
                      vit_dec_patch_size=16, num_latent_tokens=64, finetune_decoder=False,
                      is_legacy=False),
        ours=dict(config="size=B,tokens=64", decoder_size="L", token_size=64, codebook_size=8192,
                  use_l2_norm=False, legacy_reshape=False, decoder_head="pixels")),
}


def _stub_module(name: str, **attrs):
  """A module holding `attrs`, registered unless `name` imports for real."""
  import importlib
  import types
  try:
    return importlib.import_module(name)
  except ImportError:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def import_official(path: str):
  """(titok module, rar module) of a 1d-tokenizer checkout at `path`, imported file by file.

  The package __init__ files pull in training code (losses -> torchvision, diffusion, LPIPS
  downloads), so `modeling` and its subpackages are registered as bare packages and only the model
  files are executed. Imports that serve the hub, distributed training or timm's one MLP are stubbed
  when not installed: the hub mixin and `gather` are never called on this path, and the MLP is
  timm's fc1 -> act -> fc2 (dropout off in eval).
  """
  import importlib
  import types
  root = os.path.join(os.path.abspath(path), "modeling")
  if not os.path.isfile(os.path.join(root, "titok.py")):
    raise FileNotFoundError(f"--compare-official: no modeling/titok.py under {path!r}")
  import torch

  class _HubMixin:
    def __init_subclass__(cls, **kwargs):  # the class statement passes hub metadata (tags, ...)
      super().__init_subclass__()

  class _Mlp(torch.nn.Module):
    def __init__(self, in_features, hidden_features=None, out_features=None,
                 act_layer=torch.nn.GELU, drop=0.0, **_):
      super().__init__()
      self.fc1 = torch.nn.Linear(in_features, hidden_features or in_features)
      self.act = act_layer()
      self.fc2 = torch.nn.Linear(hidden_features or in_features, out_features or in_features)

    def forward(self, x):
      return self.fc2(self.act(self.fc1(x)))

  _stub_module("huggingface_hub", PyTorchModelHubMixin=_HubMixin)
  _stub_module("accelerate")
  _stub_module("accelerate.utils")
  _stub_module("accelerate.utils.operations", gather=lambda x: x)
  _stub_module("timm")
  _stub_module("timm.layers", Mlp=_Mlp)
  for name, sub in (("modeling", ""), ("modeling.modules", "modules"),
                    ("modeling.quantizer", "quantizer")):
    package = types.ModuleType(name)
    package.__path__ = [os.path.join(root, sub)] if sub else [root]
    sys.modules[name] = package
  base = importlib.import_module("modeling.modules.base_model")
  sys.modules["modeling.modules"].BaseModel = base.BaseModel  # rar.py: from modeling.modules import
  return importlib.import_module("modeling.titok"), importlib.import_module("modeling.rar")


def time_rounds(fns: dict[str, Callable[[], object]], repeats: int, warmup: bool = True
                ) -> dict[str, float]:
  """Median seconds of each callable (which blocks until its result is ready), timed in `repeats`
  rounds that call every one once in turn, so machine load drifting over minutes hits all alike.
  One untimed call of each first when `warmup`."""
  if warmup:
    for fn in fns.values():
      fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def xla_op_profile(jitted, *args, top: int = 5) -> tuple[float, str]:
  """Where one call of `jitted(*args)` (a jax.jit function) spends its time, from a jax.profiler
  trace: the summed time of the XLA ops by kind (convolution / matmul / reduction / the rest:
  elementwise, copies, slices), the kinds read from the compiled HLO's fusion bodies, and the
  `top` ops with their share and output shape. Returns (seconds of XLA ops, summary)."""
  import collections
  import glob
  import gzip
  import json
  import re
  import tempfile
  compiled = jitted.lower(*args).compile()
  hlo = compiled.as_text()
  bodies = {m.group(1): m.group(2) for m in re.finditer(r"^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo,
                                                        re.M | re.S)}
  ops = {}  # instruction name -> (output shape, kind)
  for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\((.*)$", hlo, re.M):
    name, shape, opcode, rest = m.groups()
    callee = re.search(r"calls=%?([\w.\-]+)", rest)
    text = bodies.get(callee.group(1), "") if callee else f" {opcode}("
    kind = ("convolution" if "convolution(" in text else "matmul" if " dot(" in text
            else "reduction" if "reduce(" in text else "elementwise/copy")
    ops[name] = (shape, kind)
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      jax.block_until_ready(compiled(*args))
    paths = glob.glob(os.path.join(d, "**", "perfetto_trace.json.gz"), recursive=True)
    events = json.load(gzip.open(paths[0]))["traceEvents"] if paths else []
  total, by_kind = collections.Counter(), collections.Counter()
  for e in events:  # only the XLA ops: executor waits and Python frames overlap them
    if e.get("ph") == "X" and e.get("name") in ops:
      total[e["name"]] += e.get("dur", 0)
      by_kind[ops[e["name"]][1]] += e.get("dur", 0)
  op_sum = sum(total.values()) or 1
  kinds = ", ".join(f"{k} {v / op_sum:.0%}" for k, v in by_kind.most_common())
  top_ops = "; ".join(f"{n} {ops[n][1]} {ops[n][0].split('{')[0]} {v / op_sum:.0%}"
                      for n, v in total.most_common(top))
  return op_sum / 1e6, f"{op_sum / 1e6:.2f} s in XLA ops: {kinds}. Top ops: {top_ops}"


def _load_note() -> str:
  """The 1-minute load average (shared machines: other jobs' load slows both sides alike)."""
  return f"load {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""


def official_suite(args) -> list[tuple[str, str, float, str]]:
  """jaxtok vs the official TiTok (encode, decode) and RAR generate(), float32, on one device."""
  import torch
  if not args.compare_official:
    raise SystemExit("--suite official needs --compare-official PATH (a 1d-tokenizer checkout)")
  torch.set_num_threads(os.cpu_count() or 1)
  titok_mod, rar_mod = import_official(args.compare_official)
  rows = Rows()
  for name in _model_names(args, "titok_s128,titok_bl64,rar"):
    if name == "rar":
      _recording_failure(rows, "rar", "both", lambda: _official_rar(args, rar_mod, rows))
    elif name in OFFICIAL_TITOK:
      _recording_failure(rows, name, "both", lambda name=name: _official_titok(
          args, name, titok_mod, rows))
    else:
      raise ValueError(f"--models entries must be in {sorted(OFFICIAL_TITOK) + ['rar']}, got {name!r}")
  return rows


def _pair_rows(case, t_ours, t_theirs, per, unit="images/s"):
  """Rows for one timed pair: jaxtok first, then the official with the speed ratio."""
  load = _load_note()
  return [(case, "jaxtok", t_ours * 1e3, f"{per / t_ours:.3g} {unit}; {load}"),
          (case, "official 1d-tokenizer (PyTorch)", t_theirs * 1e3,
           f"{per / t_theirs:.3g} {unit}; jaxtok {t_theirs / t_ours:.2f}x")]


def _official_titok(args, name, titok_mod, rows):
  import torch
  from flax import nnx
  from omegaconf import OmegaConf
  from jaxtok import tokenizers
  from jaxtok.configs import titok as titok_cfg

  spec = OFFICIAL_TITOK[name]
  b = args.batch
  stage(f"{name}: building the official model")
  torch.manual_seed(0)
  theirs = titok_mod.TiTok(OmegaConf.create({"model": {"vq_model": spec["official"]},
                                             "dataset": {"preprocessing": {"crop_size": 256}}})).eval()
  ours_spec = dict(spec["ours"])
  c = titok_cfg.get_config(ours_spec.pop("config"))
  c.model.update(ours_spec)
  c.model.dtype = "float32"
  tok = tokenizers.build(c.model)
  params = jax.block_until_ready(tok.init(jax.random.key(0)))
  n_ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  n_theirs = sum(p.numel() for p in theirs.parameters())
  images = np.random.default_rng(0).random((b, 256, 256, 3)).astype(np.float32)
  x_ours = jnp.asarray(images)
  x_theirs = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  stage(f"{name}: jaxtok {n_ours / 1e6:.1f}M params, official {n_theirs / 1e6:.1f}M; compiling")
  tokens = jax.block_until_ready(tok.encode(params, x_ours).tokens)
  jax.block_until_ready(tok.decode(params, tokens))
  with torch.no_grad():
    t_tokens = theirs.encode(x_theirs)[1]["min_encoding_indices"]
    fns = {
        "ours_enc": lambda: jax.block_until_ready(tok.encode(params, x_ours).tokens),
        "theirs_enc": lambda: theirs.encode(x_theirs)[1]["min_encoding_indices"],
        "ours_dec": lambda: jax.block_until_ready(tok.decode(params, tokens)),
        "theirs_dec": lambda: theirs.decode_tokens(t_tokens),
    }
    stage(f"{name}: timing {args.repeats} rounds")
    t = time_rounds(fns, args.repeats)
  note = f" ({n_ours / 1e6:.1f}M / {n_theirs / 1e6:.1f}M params)"
  rows += _pair_rows(f"{name} encode, batch {b}", t["ours_enc"], t["theirs_enc"], b)
  rows += _pair_rows(f"{name} decode, batch {b}", t["ours_dec"], t["theirs_dec"], b)
  rows += _pair_rows(f"{name} encode + decode, batch {b}{note}", t["ours_enc"] + t["ours_dec"],
                     t["theirs_enc"] + t["theirs_dec"], b)
  if args.breakdown:
    if spec["ours"]["decoder_head"] == "proxy_codes":
      _pixel_decoder_rows(args, name, tok, params, theirs, rows)
    _profile_row(rows, f"{name} encode, batch {b}", jax.jit(
        lambda p, x: nnx.merge(tok.graphdef, p).encode(x).tokens),
                 params, x_ours)
    _profile_row(rows, f"{name} decode, batch {b}", jax.jit(
        lambda p, t: nnx.merge(tok.graphdef, p).decode(t)),
                 params, tokens)


def _profile_row(rows, case, jitted, *args):
  stage(f"{case}: profiling one jaxtok call")
  seconds, text = xla_op_profile(jitted, *args)
  rows.append((case, "jaxtok, XLA op profile (one call)", seconds * 1e3, text))


def _pixel_decoder_rows(args, name, tok, params, theirs, rows):
  """The MaskGIT-VQGAN pixel decoder alone (16x16x256 codes -> 256x256 pixels), both sides."""
  import torch
  from flax import nnx
  b = args.batch
  z = np.random.default_rng(1).standard_normal((b, 16, 16, 256)).astype(np.float32) * 0.03
  z_ours, z_theirs = jnp.asarray(z), torch.from_numpy(z).permute(0, 3, 1, 2).contiguous()
  dec = jax.jit(lambda p, z: nnx.merge(tok.graphdef, p).pixel_decoder(z))
  with torch.no_grad():
    t = time_rounds({"ours": lambda: jax.block_until_ready(dec(params, z_ours)),
                     "theirs": lambda: theirs.pixel_decoder(z_theirs)}, args.repeats)
  rows += _pair_rows(f"{name} pixel decoder alone, batch {b}", t["ours"], t["theirs"], b)


def _official_rar(args, rar_mod, rows):
  """Official RAR generate() (KV cache, guidance by doubling the batch) against jaxtok's RAR holding
  the same weights (converted from the official model's state dict by `convert.rar`) under
  `samplers.autoregressive.sample` with the same guidance: both run 2B rows per step. jaxtok runs
  twice: reading the whole preallocated cache at every step, and with `segment=--ar-segment`
  (each step reads only the filled slots). Then jaxtok's GPT (LlamaGen layout) at the same width,
  depth and heads, for reference (12 W^2 multiply-adds per token and block against RAR's 18)."""
  import torch
  from flax import nnx
  from omegaconf import OmegaConf
  from jaxtok.convert import common as convert_common
  from jaxtok.convert import rar as rar_convert
  from jaxtok.generators import gpt
  from jaxtok.samplers import autoregressive as ar

  b, n, depth, vocab = args.ar_batch, args.ar_tokens, args.rar_depth, 1024
  width, heads, classes = 768, 16, 1000
  # configs/training/generator/rar.yaml (RAR-B: 24 layers; --rar-depth sets the depth) and its
  # sampling settings: guidance 16.0 with the power-cosine schedule (power 2.75), temperature 1.0.
  official = {"model": {
      "vq_model": {"codebook_size": vocab},
      "generator": dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                        intermediate_size=4 * width, dropout=0.1, attn_drop=0.1,
                        class_label_dropout=0.1, image_seq_len=n, condition_num_classes=classes)}}
  stage("rar: building the official model")
  torch.manual_seed(0)
  theirs = rar_mod.RAR(OmegaConf.create(official)).eval()
  # Official init leaves adaLN at zero (every block the identity): perturb every tensor, so that
  # both sides sample from a network that depends on its input (the work is the same either way).
  with torch.no_grad():
    for t in theirs.parameters():
      t.add_(0.02 * torch.randn_like(t))
  flat = {k: v.detach().numpy() for k, v in theirs.state_dict().items()}
  cfg = rar_convert.resolve_config(official, flat)
  model = rar_convert.build(cfg, convert_common.fill_state(rar_convert.abstract_params(cfg),
                                                           rar_convert.convert(flat, cfg)))
  labels = np.arange(b) % classes
  t_labels = torch.from_numpy(labels)
  j_labels = jnp.asarray(labels, jnp.int32)
  guidance = dict(num_tokens=n, cfg_scale=16.0, cfg_schedule="power-cosine", cfg_power=2.75,
                  temperature=1.0)

  def compile_sampler(m, segment):
    graphdef, params = nnx.split(m)

    @jax.jit
    def sample(params, labels, rng):
      m = nnx.merge(graphdef, params)
      prompt = m.condition_ids(labels, b)[:, None]
      return ar.sample(rng, m.prefill, m.step, m.init_cache(2 * b), prompt,
                       uncond_prompt_tokens=jnp.full_like(prompt, m.null_id), segment=segment,
                       segment_fn=getattr(m, "prepare_segment", None) if segment else None,
                       **guidance)
    compiled = sample.lower(params, j_labels, jax.random.key(0)).compile()
    jax.block_until_ready(compiled(params, j_labels, jax.random.key(1)))  # warm-up
    return sample, params, (lambda: jax.block_until_ready(compiled(params, j_labels,
                                                                   jax.random.key(0))))

  stage("rar: compiling jaxtok's RAR samplers (whole cache; segments)")
  seg = args.ar_segment
  rar_fn, rar_params, ours_full = compile_sampler(model, None)
  _, _, ours_seg = compile_sampler(model, seg)
  ref = gpt.GPT(codebook_size=vocab, seq_len=n, num_classes=classes, width=width, depth=depth,
                heads=heads, rngs=nnx.Rngs(0))
  _, _, gpt_full = compile_sampler(ref, None)
  _, _, gpt_seg = compile_sampler(ref, seg)

  def theirs_fn():
    with torch.no_grad():
      return theirs.generate(t_labels, guidance_scale=16.0, randomize_temperature=1.0,
                             guidance_scale_pow=2.75, kv_cache=True)

  # Warm-up of the official loop (PyTorch's first calls create its kernels): a few of its steps.
  theirs.image_seq_len = 4
  theirs_fn()
  theirs.image_seq_len = n
  stage(f"rar: timing {args.ar_repeats} rounds")
  t = time_rounds({"ours": ours_full, "ours_seg": ours_seg, "gpt": gpt_full, "gpt_seg": gpt_seg,
                   "theirs": theirs_fn}, args.ar_repeats, warmup=False)
  if args.breakdown:
    _profile_row(rows, f"RAR sample {n} tokens, batch {b} (+{b} guidance rows)", rar_fn,
                 rar_params, j_labels, jax.random.key(0))
  per = b * n
  case = (f"RAR sample {n} tokens, batch {b} (+{b} guidance rows), {depth} x {width}, {heads} "
          f"heads, vocab {vocab}, same weights")
  rows += _pair_rows(case, t["ours"], t["theirs"], per, unit="tokens/s")
  load = _load_note()
  rows.append((case, f"jaxtok, segment={seg}", t["ours_seg"] * 1e3,
               f"{per / t['ours_seg']:.3g} tokens/s; official / this {t['theirs'] / t['ours_seg']:.2f}x; {load}"))
  gcase = f"GPT (LlamaGen layout) sample, same size, guidance and batch (reference)"
  for key, label in (("gpt", "jaxtok GPT"), ("gpt_seg", f"jaxtok GPT, segment={seg}")):
    rows.append((gcase, label, t[key] * 1e3,
                 f"{per / t[key]:.3g} tokens/s; official RAR / this {t['theirs'] / t[key]:.2f}x; {load}"))


def ecar_suite(args) -> list[tuple[str, str, float, str]]:
  """E-CAR's stage-wise sampling beside MAR and a full-grid flow on the same 8 x 8 grid of 16-dim
  tokens and the same small trunk and head (width 256, 4 layers; head 3 x 256), with the model
  calls per image batch; then D-AR's decode and streaming previews per group (a small tokenizer)."""
  from flax import nnx
  from jaxtok.generators import ecar as ecar_lib
  from jaxtok.generators import mar as mar_lib
  from jaxtok.samplers import ecar, flow, mar
  from jaxtok.tokenizers import api, dar as dar_lib

  rows = Rows()
  b, side, d, steps = args.other_batch or 4, 8, 16, 8
  n = side * side
  reps = max(1, args.repeats // 5)
  kw = dict(width=256, depth=4, heads=4, head_width=256, head_depth=3, num_classes=10)
  labels = jnp.zeros((b,), jnp.int32)
  stage("ecar: building models")
  model = ecar_lib.ECAR(token_dim=d, seq_len=n, num_stages=4, rngs=nnx.Rngs(0), **kw)
  graph, params = nnx.split(model)

  @jax.jit
  def run_ecar(params, rng):
    m = nnx.merge(graph, params)
    return ecar.sample(rng, m.stage_condition, m.velocity, batch=b, grid_side=side, token_dim=d,
                       num_stages=4, head_steps=steps, cond=labels).tokens

  calls = ecar.model_calls(4, steps)
  t = time_call(lambda: run_ecar(params, jax.random.key(0)), reps, jax.block_until_ready)
  rows.append((f"E-CAR 4 stages (1,2,4,8)^2, {steps} head steps/stage, batch {b}", "ecar.sample",
               t * 1e3, f"{b * n / t:.0f} tokens/s; {calls['condition']} trunk + {calls['head']} "
               f"head calls"))

  mar_model = mar_lib.MAR(token_dim=d, seq_len=n, rngs=nnx.Rngs(0), **kw)
  mgraph, mparams = nnx.split(mar_model)
  iters = 16

  @jax.jit
  def run_mar(params, rng):
    m = nnx.merge(mgraph, params)
    head = flow.flip_time(lambda x, t, z: m.head(x, jnp.full((x.shape[0],), t), z))
    return mar.sample(rng, m.condition, head, batch=b, num_tokens=n, token_dim=d, steps=iters,
                      head_steps=steps, cond=labels).tokens

  t = time_call(lambda: run_mar(mparams, jax.random.key(0)), reps, jax.block_until_ready)
  rows.append((f"MAR {iters} iterations, {steps} head steps each, batch {b}", "mar.sample", t * 1e3,
               f"{b * n / t:.0f} tokens/s; {iters} trunk + {iters * steps} head calls"))

  # A DiT-like flow over the whole grid: trunk (fed x_t) and head at every one of 4 * steps steps.
  one = ecar_lib.ECAR(token_dim=d, seq_len=n, num_stages=1, rngs=nnx.Rngs(0), **kw)
  ograph, oparams = nnx.split(one)
  fsteps = 4 * steps

  @jax.jit
  def run_flow(params, rng):
    m = nnx.merge(ograph, params)
    def v(x, t, c):
      z = m.stage_condition((x.reshape(b, side, side, d),), c).reshape(b * n, -1)
      return m.velocity(x, t, z)
    return flow.sample(v, jax.random.normal(rng, (b * n, d)), labels, steps=fsteps)

  t = time_call(lambda: run_flow(oparams, jax.random.key(0)), reps, jax.block_until_ready)
  rows.append((f"full-grid flow {fsteps} steps, batch {b}", "flow.sample (trunk + head per step)",
               t * 1e3, f"{b * n / t:.0f} tokens/s; {fsteps} trunk + {fsteps} head calls"))

  stage("dar: building the tokenizer")
  groups = 4
  cfg = dict(name="dar", image_size=32, patch_size=4, enc_width=64, enc_depth=2, token_width=64,
             token_depth=2, dec_width=64, dec_depth=2, head_dim=16, num_tokens=16,
             num_groups=groups, num_steps=16, fsq_levels=(8, 5, 5))
  tok = api.build(cfg)
  tparams = tok.init(jax.random.key(0))
  tokens = jnp.zeros((b, 16), jnp.int32)
  noise = jax.random.normal(jax.random.key(1), (b, 32, 32, 3))
  decode = jax.jit(lambda p, x: tok.model(p).decode(x, noise=noise))
  views = jax.jit(lambda p, x: dar_lib.previews(tok.model(p), x, noise))
  t = time_call(lambda: decode(tparams, tokens), reps, jax.block_until_ready)
  rows.append((f"D-AR decode 32px, 16 tokens in {groups} groups, 16 steps, batch {b}", "DAR.decode",
               t * 1e3, f"{t * 1e3 / groups:.2f} ms per group"))
  t = time_call(lambda: views(tparams, tokens), reps, jax.block_until_ready)
  rows.append((f"D-AR streaming previews (one per group), batch {b}", "dar.previews", t * 1e3,
               f"{t * 1e3 / groups:.2f} ms per group preview"))
  return rows


def gaussian_layton_suite(args) -> list[tuple[str, str, float, str]]:
  """Layton and GPSToken tiny configs beside TiTok tiny: encode and decode ms per batch (random
  parameters: the numbers are speed, not quality), Layton decode at 1 and 2 consistency steps, and
  the Gaussian splatting renderer alone per image (tiny and the release's M-128 sizes)."""
  from jaxtok import tokenizers
  from jaxtok.configs import gpstoken as gps_cfg, layton as layton_cfg, titok as titok_cfg
  from jaxtok.tokenizers import gaussian_render

  rows = Rows()
  b = args.batch or 4
  rs = np.random.default_rng(0)
  for name, c, dec_opts in (("titok tiny", titok_cfg.get_config("tiny"), [{}]),
                            ("layton tiny", layton_cfg.get_config("tiny"),
                             [{"num_steps": 1}, {"num_steps": 2}]),
                            ("gpstoken tiny", gps_cfg.get_config("tiny"), [{}])):
    stage(f"{name}: building")
    tok = tokenizers.build(c.model)
    params = jax.tree.map(lambda a: jnp.asarray(0.02 * rs.normal(size=a.shape), a.dtype),
                          tok.abstract_params())
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    s = tok.image_size
    images = jnp.asarray(rs.random((b, s, s, 3)), jnp.float32)
    tokens = jax.block_until_ready(tok.encode(params, images).tokens)
    t_enc = time_call(lambda: tok.encode(params, images).tokens, args.repeats, jax.block_until_ready)
    note = f"{n_params / 1e3:.0f}k params, {s}px, tokens {tuple(tokens.shape[1:])}"
    rows.append((f"{name} encode, batch {b}", "jaxtok", t_enc * 1e3, note))
    for opts in dec_opts:
      t_dec = time_call(lambda: tok.decode(params, tokens, **opts), args.repeats,
                        jax.block_until_ready)
      extra = f", {opts['num_steps']} consistency step(s)" if opts else ""
      rows.append((f"{name} decode, batch {b}{extra}", "jaxtok", t_dec * 1e3, note))
  for s_num, r, c_dim in ((8, 8, 4), (128, 64, 16)):
    sig = jnp.asarray(np.stack([rs.uniform(0.05, 0.3, (b, s_num)), rs.uniform(0.05, 0.3, (b, s_num)),
                                rs.uniform(-0.5, 0.5, (b, s_num))], -1), jnp.float32)
    mu = jnp.asarray(rs.uniform(-1, 1, (b, s_num, 2)), jnp.float32)
    feat = jnp.asarray(rs.normal(size=(b, s_num, c_dim)), jnp.float32)
    fn = lambda s_, m_, f_, r=r: gaussian_render.render(s_, m_, f_, r, r, 3.0)
    t = jax_time(fn, sig, mu, feat, repeats=args.repeats)
    rows.append((f"splatting renderer, {s_num} Gaussians -> {r}x{r}x{c_dim}", "jaxtok",
                 t * 1e3 / b, f"per image (batch {b}), dmax 3"))
  return rows


def text_suite(args) -> list[tuple[str, str, float, str]]:
  """Text-conditioned models at small sizes (random weights): the CLIP text encoder on 77-token
  captions, TA-TiTok encode and text-aware decode, MaskGen-VQ sampling (guided, the release's
  procedure) -- images/s at --batch (default 8)."""
  from flax import nnx
  from jaxtok.generators import maskgen
  from jaxtok.nn import clip_text
  from jaxtok.tokenizers import api, tatitok
  b = args.batch or 8
  rows = Rows()
  rng = np.random.default_rng(0)
  stage("text: CLIP text encoder")
  clip_cfg = dict(width=256, depth=4, num_heads=4, vocab_size=49408, context_length=77,
                  embed_dim=256)
  clip_params = nnx.state(clip_text.make_model(clip_cfg, rngs=nnx.Rngs(0)), nnx.Param)
  ids = jnp.asarray(rng.integers(1, 49406, (b, 77)), jnp.int32)
  feats_fn = jax.jit(clip_text.features_fn(clip_cfg))
  t = time_call(lambda: feats_fn(clip_params, ids), args.repeats, jax.block_until_ready)
  rows.append((f"CLIP text W256 L4, 77 tokens, batch {b}", "jaxtok", t * 1e3,
               f"{b / t:.3g} captions/s"))
  feats = feats_fn(clip_params, ids)
  stage("text: TA-TiTok")
  cfg = dict(name="tatitok", image_size=64, patch_size=8, encoder_width=128, encoder_depth=2,
             encoder_heads=4, decoder_width=128, decoder_depth=2, decoder_heads=4,
             num_latent_tokens=32, token_size=16, codebook_size=1024, use_l2_norm=False,
             text_context_length=77, text_embed_dim=256)
  tok = api.build(cfg)
  params = tok.init(jax.random.key(0))
  images = jnp.asarray(rng.random((b, 64, 64, 3)), jnp.float32)
  t_enc = time_call(lambda: tok.encode(params, images).tokens, args.repeats, jax.block_until_ready)
  tokens = tok.encode(params, images).tokens
  note = "64px, patch 8, W128 L2+2, 32 tokens, VQ 1024"
  rows.append((f"TA-TiTok encode, batch {b}", "jaxtok", t_enc * 1e3,
               f"{b / t_enc:.3g} images/s; {note}"))
  decode = tatitok.decode_fn(tok)
  t_dec = time_call(lambda: decode(params, tokens, feats["tokens"]), args.repeats,
                    jax.block_until_ready)
  rows.append((f"TA-TiTok decode with 77 text tokens, batch {b}", "jaxtok", t_dec * 1e3,
               f"{b / t_dec:.3g} images/s; {note}"))
  stage("text: MaskGen-VQ sampling")
  gcfg = dict(codebook_size=1024, seq_len=32, num_classes=0, width=128, depth=4, heads=4,
              text_dim=256, micro_condition=True, micro_condition_dim=64)
  graphdef, gparams = nnx.split(maskgen.make_model(gcfg, rngs=nnx.Rngs(0)))
  cond = maskgen.text_condition(feats)
  null = {k: v[:1] for k, v in cond.items()}

  @jax.jit
  def sample(p, key):
    return maskgen.sample(nnx.merge(graphdef, p), key, cond, null)

  t_s = time_call(lambda: sample(gparams, jax.random.key(1)), max(1, args.repeats // 2),
                  jax.block_until_ready)
  rows.append((f"MaskGen-VQ sample 32 tokens, 16 guided steps, batch {b}", "jaxtok", t_s * 1e3,
               f"{b / t_s:.3g} images/s (tokens only); W128 L4, 77 text tokens"))
  return rows


# ---- dimwise: TokenBridge, CubiD and the masked-diffusion decoders at one small size

def dimwise_suite(args) -> list[tuple[str, str, float, str]]:
  """tokens/s and model calls per image: TokenBridge, CubiD, MAR and masked diffusion (sequential /
  parallel first-hitting, ancestral, deferred commitment, an untrained unmasking policy), all on
  16 tokens (x 8 dims for the continuous / dimension-wise ones), 2 x 64 trunks, batch 4."""
  from flax import nnx
  from jaxtok.eval import generate
  from jaxtok.generators import bert, cubid, mar as mar_lib, tokenbridge
  from jaxtok.samplers import deferred, masked_diffusion, unmasking_policy

  rows = Rows()
  b, n, d, reps = 4, 16, 8, max(1, args.repeats // 3)
  labels = jnp.zeros((b,), jnp.int32)
  trunk = dict(seq_len=n, num_classes=10, width=64, depth=2, heads=2)

  def timed(case, impl, fn, calls):
    jitted = jax.jit(fn)
    out = jitted(jax.random.key(0))
    t = time_call(lambda: jitted(jax.random.key(0)), reps, jax.block_until_ready)
    rows.append((case, impl, t * 1e3, f"{b * n / t:.0f} tokens/s; {calls(out)} model calls per image"))

  stage("dimwise: TokenBridge / CubiD / MAR")
  case = f"{n} tokens x {d} dims, batch {b}, 2x64"
  opts = generate.Options(steps=8)
  for name, model, calls in (
      ("TokenBridge (8 iterations, 16 levels)", tokenbridge.TokenBridge(
          token_dim=d, bits=4, head_width=64, head_depth=1, head_heads=2, rngs=nnx.Rngs(0), **trunk),
       f"8 trunk + {8 * d} head"),
      ("CubiD (8 steps over 128 elements, 16 levels)",
       cubid.CubiD(token_dim=d, bits=4, rngs=nnx.Rngs(0), **trunk), "8"),
      ("MAR (8 iterations, flow head 8 steps)", mar_lib.MAR(
          token_dim=d, head_width=64, head_depth=2, rngs=nnx.Rngs(0), **trunk),
       "8 trunk + 64 head")):
    graphdef, params = nnx.split(model)
    kind = {"TokenBridge": "tokenbridge", "CubiD": "cubid", "MAR": "mar"}[name.split()[0]]
    o = generate.Options(steps=8, head_steps=8) if kind == "mar" else opts
    sampler = generate.make_sampler(kind, graphdef, params, o)
    timed(case, name, lambda r, s=sampler: s(r, labels), lambda out, c=calls: c)

  stage("dimwise: masked diffusion decoders")
  net = bert.MaskGITTransformer(codebook_size=256, rngs=nnx.Rngs(0), **trunk)
  graphdef, params = nnx.split(net)
  model = nnx.merge(graphdef, params)
  fn = lambda t: model(t, labels)
  start = jnp.full((b, n), net.mask_id, jnp.int32)
  case = f"masked diffusion {n} tokens, vocab 256, batch {b}, 2x64"
  mid = net.mask_id
  timed(case, "first_hitting (exact)", lambda r: masked_diffusion.first_hitting(
      r, fn, start, mask_id=mid)[0], lambda out: n)
  timed(case, "first_hitting_parallel, 4 per call", lambda r: masked_diffusion.first_hitting_parallel(
      r, fn, start, mask_id=mid, tokens_per_step=4)[0], lambda out: n // 4)
  timed(case, "ancestral, 8 steps", lambda r: masked_diffusion.ancestral(
      r, fn, start, mask_id=mid, steps=8), lambda out: 8)
  timed(case, "deferred (window 4, threshold 0.9)", lambda r: deferred.sample(
      r, fn, start, mask_id=mid, window=4, threshold=0.9)[1],
        lambda out: f"{float(np.mean(np.asarray(out).max(-1) + 1)):.1f}")
  policy = unmasking_policy.UnmaskingPolicy(width=16, heads=2, rngs=nnx.Rngs(0))
  timed(case, "unmasking policy (untrained, <= 8 steps)", lambda r: unmasking_policy.rollout(
      r, policy, fn, start, mask_id=mid, max_steps=8).calls,
        lambda out: f"{float(np.mean(np.asarray(out))):.1f}")
  return rows


# ---- speculative: exact faster decoding (SpecTr, ASSD) and ReCAP against their plain samplers

def _peaky(model, scale: float):
  """Random-init logits are nearly uniform; scale the head so the models are confident like trained
  ones (acceptance then depends on how the draft and target disagree, not on flat distributions)."""
  model.net.head.kernel[...] = model.net.head.kernel[...] * scale
  return model


def speculative_suite(args) -> list[tuple[str, str, float, str]]:
  """GPT target 2 x 128 (vocab 256, 32 tokens, batch 4) sampled plainly and with SpecTr (k = 1, 2, 4
  drafts of 4 tokens from a self-speculative 1-layer draft: the target's embedding, first block and
  head); an any-order model of the target's size with plain sequential sampling vs ASSD; MaskGIT vs
  ReCAP. Random weights with scaled heads: the acceptance rates measure the mechanism, not a trained
  draft/target pair."""
  from flax import nnx
  from jaxtok.generators import any_order, bert, gpt
  from jaxtok.samplers import assd, maskgit, recap, spectr
  from jaxtok.samplers import autoregressive as ar

  rows, reps = Rows(), max(1, args.repeats // 3)
  b, n, vocab, width, depth, draft_len = 4, 32, 256, 128, 2, 4
  kw = dict(codebook_size=vocab, seq_len=n, num_classes=0, width=width, heads=4, class_dropout=0.0)
  target = _peaky(gpt.GPT(depth=depth, rngs=nnx.Rngs(0), **kw), 8.0)
  draft = gpt.GPT(depth=1, rngs=nnx.Rngs(1), **kw)
  for name in ("embed", "norm", "head"):
    nnx.update(getattr(draft.net, name), nnx.state(getattr(target.net, name)))
  nnx.update(draft.net.blocks.blocks[0], nnx.state(target.net.blocks.blocks[0]))
  prompt = jnp.full((b, 1), target.null_id, jnp.int32)
  case = f"GPT {depth}x{width} target, {n} tokens, batch {b}"
  stage("speculative: plain AR")
  plain = jax.jit(lambda r: ar.sample(r, target.prefill, target.step, target.init_cache(b), prompt,
                                      num_tokens=n))
  t_plain = time_call(lambda: plain(jax.random.key(0)), reps, jax.block_until_ready)
  rows.append((case, "plain AR (KV cache)", t_plain * 1e3, f"{n} target calls per image"))
  slots = 1 + n + draft_len
  # The last case drafts with the target itself: every draft is accepted, the call-count floor.
  for k, dm, dname in [(1, draft, f"1x{width}"), (2, draft, f"1x{width}"), (4, draft, f"1x{width}"),
                       (1, target, "target as")]:
    stage(f"speculative: SpecTr k={k}, {dname} draft")
    fn = jax.jit(lambda r, k=k, dm=dm: spectr.sample(
        r, target.net.extend, target.net.init_cache(k, slots), dm.net.extend,
        dm.net.init_cache(k, slots), prompt, num_tokens=n, num_drafts=k, draft_len=draft_len))
    t = time_call(lambda fn=fn: fn(jax.random.key(0)), reps, jax.block_until_ready)
    st = {key: np.asarray(v) for key, v in fn(jax.random.key(0))[1].items()}
    rows.append((case, f"SpecTr k={k}, L={draft_len} ({dname} draft)", t * 1e3,
                 f"{st['target_calls'].mean():.1f} target + {st['draft_calls'].mean():.0f} draft "
                 f"calls per image; acceptance {st['accepted'].sum() / st['drafted'].sum():.2f}; "
                 f"{t_plain / t:.2f}x plain"))

  stage("speculative: any-order model, sequential vs ASSD")
  ao = _peaky(any_order.AnyOrderGPT(depth=depth, rngs=nnx.Rngs(2), **kw), 8.0)
  orders = any_order.random_orders(jax.random.key(3), b, n)
  case = f"any-order {depth}x{width}, {n} tokens, batch {b} (full passes, no KV cache)"
  t_seq = None
  for k in (1, 4):
    fn = jax.jit(lambda r, k=k: assd.sample(
        r, lambda s, o, c, y: ao.parallel_logits(s, o, c, k, y), ao.chain_logits, orders,
        num_draft=k))
    t = time_call(lambda fn=fn: fn(jax.random.key(0)), reps, jax.block_until_ready)
    st = {key: np.asarray(v) for key, v in fn(jax.random.key(0))[1].items()}
    t_seq = t_seq or t
    acc = st["accepted"].sum() / max(1, st["drafted"].sum())
    rows.append((case, "sequential (ASSD k=1)" if k == 1 else f"ASSD k={k}", t * 1e3,
                 f"{st['model_calls'].mean():.1f} model calls per image"
                 + ("" if k == 1 else f"; acceptance {acc:.2f}; {t_seq / t:.2f}x sequential")))

  stage("speculative: MaskGIT vs ReCAP")
  m = _peaky(bert.MaskGITTransformer(depth=depth, rngs=nnx.Rngs(4), **kw), 8.0)
  steps = 16
  case = f"MaskGIT {depth}x{width}, {n} tokens, {steps} steps, batch {b}"
  fn = jax.jit(lambda r: maskgit.sample(r, lambda t: m(t), jnp.full((b, n), m.mask_id, jnp.int32),
                                        mask_id=m.mask_id, steps=steps))
  t_mg = time_call(lambda: fn(jax.random.key(0)), reps, jax.block_until_ready)
  rows.append((case, "maskgit.sample", t_mg * 1e3, f"{steps} full calls per image"))
  for cheap in (1, 3):
    q = recap.max_group_tokens("cosine", n, steps, cheap)
    fn = jax.jit(lambda r, cheap=cheap, q=q: recap.sample(
        r, lambda t, y: m.logits_and_cache(t, y, extra_slots=q),
        lambda t, p, cache, y: m.cached_logits(t, p, cache), batch=b, num_tokens=n,
        mask_id=m.mask_id, steps=steps, cheap_steps=cheap)[0])
    t = time_call(lambda fn=fn: fn(jax.random.key(0)), reps, jax.block_until_ready)
    full = len(recap.groups(steps, cheap))
    rows.append((case, f"ReCAP, {cheap} cheap per full", t * 1e3,
                 f"{full} full + {steps - full} cheap calls (<= {q} positions each); "
                 f"{t_mg / t:.2f}x maskgit"))
  return rows


# ---- next_x: xAR (each entity kind) and Hi-MAR beside MAR on the same small network

def next_x_suite(args) -> list[tuple[str, str, float, str]]:
  """Rows (case, implementation, ms per batch, tokens/s and transformer passes per image): 64
  continuous 16-dim tokens (an 8 x 8 grid), one 4 x 256 transformer size for all, unconditional,
  10 flow steps per entity (xAR) or per head call (MAR, Hi-MAR). Each xAR kind runs twice on the
  same model: the whole-sequence recompute (`next_x.sample`) and the KV cache
  (`next_x.sample_cached`), the latter's note giving its speed-up; cell 2x2 also runs the KV cache
  with the release's SDE sampler (method "sde"). xAR uses its default 2D RoPE."""
  from flax import nnx
  from jaxtok.generators import himar as himar_lib
  from jaxtok.generators import mar as mar_lib
  from jaxtok.generators import xar as xar_lib
  from jaxtok.samplers import flow, himar, mar, next_x

  b, n, d, steps, iters = args.other_batch or 4, 64, 16, 10, 16
  size = dict(width=256, depth=4, heads=4)
  reps = max(1, args.repeats // 3)
  rows = Rows()
  case = f"64 tokens x 16 dims (8 x 8), batch {b}, 4x256, {steps} flow steps"

  def timed(name, model, run, passes, recompute=None):
    graphdef, params = nnx.split(model)
    fn = jax.jit(lambda p, r: run(nnx.merge(graphdef, p), r))
    stage(f"next_x: {name}")
    t = time_call(lambda: fn(params, jax.random.key(0)), reps, jax.block_until_ready)
    note = "" if recompute is None else f"; {recompute / t:.2f}x the recompute's speed"
    rows.append((case, name, t * 1e3, f"{b * n / t:.0f} tokens/s; {passes} transformer passes "
                 f"per image{note}"))
    return t

  def mar_head(model):
    return flow.flip_time(lambda x, t, z: model.head(x, jnp.full((x.shape[0],), t), z))

  m = mar_lib.MAR(token_dim=d, seq_len=n, head_width=256, head_depth=2, rngs=nnx.Rngs(0), **size)
  timed(f"MAR, {iters} iterations", m, lambda model, r: mar.sample(
      r, model.condition, mar_head(model), batch=b, num_tokens=n, token_dim=d, steps=iters,
      head_steps=steps).tokens, f"{iters} (+ {iters * steps} head)")
  for kind, k in (("token", 1), ("cell", 2), ("cell", 4), ("subsample", 2), ("scale", 0),
                  ("image", 1)):
    x = xar_lib.XAR(token_dim=d, seq_len=n, entity=kind, entity_size=k, rope="2d", rngs=nnx.Rngs(0),
                    **size)
    e = x.layout.num_entities
    label = f"xAR {kind}" + (f" {k}x{k}" if kind == "cell" else f" stride {k}" if kind == "subsample"
                             else "") + f", {e} entities"
    full = timed(label, x, lambda model, r: next_x.sample(
        r, model.velocity, batch=b, entity_ids=model.entity_ids, token_dim=d, steps=steps),
        e * steps)
    # The same model through the KV cache: each flow step over one entity, one prefill per entity.
    timed(label + ", KV cache", x, lambda model, r: next_x.sample_cached(
        r, model.extend, model.init_cache, batch=b, entity_ids=model.entity_ids, token_dim=d,
        steps=steps), f"{e * steps} entity-sized (+ {e - 1} prefill)", recompute=full)
    if (kind, k) == ("cell", 2):  # the release's SDE sampler: the same calls, plus its noise
      timed(label + ", KV cache, SDE", x, lambda model, r: next_x.sample_cached(
          r, model.extend, model.init_cache, batch=b, entity_ids=model.entity_ids, token_dim=d,
          steps=steps, method="sde"), f"{e * steps} entity-sized (+ {e - 1} prefill)",
          recompute=full)
  hm = himar_lib.HiMAR(token_dim=d, seq_len=n, pivot_factor=4, head_width=256, head_depth=2,
                       rngs=nnx.Rngs(0), **size)

  def run_himar(model, r):
    head = lambda x, t, z, phase: flow.flip_time(
        lambda x, t, z: model.head_velocity(x, jnp.full((x.shape[0],), t), z, phase))(x, t, z)
    return himar.sample(r, model.condition_pivots, model.condition_dense, head, batch=b,
                        num_pivots=model.num_pivots, num_tokens=n, token_dim=d,
                        pivot_steps=model.pivot_iters, steps=iters, head_steps=steps).tokens
  passes = hm.pivot_iters + iters
  timed(f"Hi-MAR, {hm.num_pivots} pivots ({hm.pivot_iters} iterations) + {iters} iterations", hm,
        run_himar, f"{passes} (+ {passes * steps} head)")
  return rows


def resgen_suite(args) -> list[tuple[str, str, float, str]]:
  """ResGen beside MaskGIT and MAR, and Instella's binary diffusion and binary AR beside the GPT, all
  on one small trunk (4 x 256, 4 heads; --ar-size overrides), batch --other-batch (default 4), 64
  positions. ResGen: 4 RVQ levels (256 tokens), 8 steps; MaskGIT over the same 256 tokens flattened,
  8 steps; MAR: 64 x 16-dim tokens, 8 iterations, 25 head steps. Bits: 64 tokens x 32 bits, binary
  diffusion 20 steps (the release's default), binary AR and the GPT (4096 codes) one cached call
  per token. tokens/s counts each model's own tokens (ResGen: positions x levels; bits: 32-bit
  tokens)."""
  from flax import nnx
  from jaxtok.generators import bert, binary_ar, gpt, resgen
  from jaxtok.generators import binary_diffusion as bd
  from jaxtok.generators import mar as mar_lib
  from jaxtok.samplers import autoregressive as ar
  from jaxtok.samplers import binary_diffusion as bd_sampler
  from jaxtok.samplers import flow, mar, maskgit
  from jaxtok.samplers import resgen as rg_sampler

  rows = Rows()
  b, n, levels = args.other_batch or 4, 64, 4
  width, depth, heads = _ar_size(args.ar_size if args.ar_size != "768x12" else "256x4")
  size = f"{depth}x{width}"
  trunk = dict(width=width, depth=depth, heads=heads)
  reps = max(1, args.repeats // 3)
  labels = jnp.zeros((b,), jnp.int32)

  def timed(case, impl, fn, tokens, calls):
    stage(f"resgen suite: {case} / {impl}")
    t = time_call(lambda: fn(jax.random.key(0)), reps, jax.block_until_ready)
    rows.append((case, impl, t * 1e3, f"{b * tokens / t:.0f} tokens/s, {calls} model calls per image"))

  g, p = nnx.split(resgen.ResGen(num_levels=levels, codebook_size=256, code_dim=16, seq_len=n,
                                 num_classes=10, num_mixtures=16, rngs=nnx.Rngs(0), **trunk))
  rg_run = jax.jit(lambda rng: rg_sampler.sample(
      rng, lambda t, m, c: nnx.merge(g, p)(t, m, c), nnx.merge(g, p).table(), batch=b, seq_len=n,
      steps=8, cond=labels))
  timed(f"{n} positions x {levels} RVQ levels, batch {b}, {size}", "ResGen, 8 steps (MoG head, "
        "re-quantisation)", rg_run, n * levels, 8)

  g2, p2 = nnx.split(bert.MaskGITTransformer(codebook_size=256, seq_len=n * levels, num_classes=10,
                                             rngs=nnx.Rngs(0), **trunk))
  mg_run = jax.jit(lambda rng: maskgit.sample(
      rng, lambda t: nnx.merge(g2, p2)(t, labels), jnp.full((b, n * levels), 256, jnp.int32),
      mask_id=256, steps=8)[0])
  timed(f"{n} positions x {levels} RVQ levels, batch {b}, {size}", f"MaskGIT over the {n * levels} "
        "tokens flattened, 8 steps", mg_run, n * levels, 8)

  g3, p3 = nnx.split(mar_lib.MAR(token_dim=16, seq_len=n, num_classes=10, head_width=256,
                                 head_depth=2, rngs=nnx.Rngs(0), **trunk))

  def mar_run(rng):
    model = nnx.merge(g3, p3)
    head = flow.flip_time(lambda x, t, z: model.head(x, jnp.full((x.shape[0],), t), z))
    return mar.sample(rng, model.condition, head, batch=b, num_tokens=n, token_dim=16, steps=8,
                      head_steps=25, cond=labels).tokens
  timed(f"{n} continuous 16-dim tokens, batch {b}, {size}", "MAR, 8 iterations, 25 head steps",
        jax.jit(mar_run), n, 8)

  bits = 32
  g4, p4 = nnx.split(bd.BinaryDiffusion(num_bits=bits, seq_len=n, num_classes=10, rngs=nnx.Rngs(0),
                                        **trunk))
  bd_run = jax.jit(lambda rng: bd_sampler.sample(
      rng, lambda x, t, c: nnx.merge(g4, p4)(x, t, c), (b, n, bits), steps=20, cond=labels))
  timed(f"{n} tokens x {bits} bits, batch {b}, {size}", "binary diffusion, 20 steps", bd_run, n, 20)

  g5, p5 = nnx.split(binary_ar.BinaryAR(num_bits=bits, seq_len=n, num_classes=10, rngs=nnx.Rngs(0),
                                        **trunk))
  bar_run = jax.jit(lambda rng: binary_ar.sample(rng, nnx.merge(g5, p5), labels))
  timed(f"{n} tokens x {bits} bits, batch {b}, {size}", "binary AR (KV cache, bits independent "
        "per token)", bar_run, n, n)

  g6, p6 = nnx.split(gpt.GPT(codebook_size=4096, seq_len=n, num_classes=10, rngs=nnx.Rngs(0), **trunk))

  def gpt_run(rng):
    m = nnx.merge(g6, p6)
    return ar.sample(rng, m.prefill, m.step, m.init_cache(b), m.condition_ids(labels, b)[:, None],
                     num_tokens=n)
  timed(f"{n} tokens, 4096 codes, batch {b}, {size}", "GPT (KV cache)", jax.jit(gpt_run), n, n)
  return rows


# ---- semantic tokenizers: TokenFlow / DualToken beside a TiTok of similar size

# 64 px, 8 x 8 = 64 tokens each, transformer widths 192 (random weights: throughput only).
_SEM_SIGLIP = dict(width=192, depth=4, num_heads=3, mlp_hidden=768, patch_size=8, image_size=64)


def _semantic_configs() -> dict:
  """name -> model config of the semantic suite (the tiny configs scaled to 64 px and width 192)."""
  from jaxtok.configs import dualtoken, titok, tokenflow
  tf = tokenflow.get_config("tiny").model
  tf.update(image_size=64, siglip=dict(_SEM_SIGLIP), codebook_size=4096, semantic_dim=32, pixel_dim=8,
            ch=32, ch_mult=(1, 1, 2, 4), num_res_blocks=1, z_channels=64, num_groups=8,
            decoder_width=192, decoder_depth=2, decoder_heads=3, scales=None)
  dt = dualtoken.get_config("tiny").model
  dt.update(image_size=64, siglip=dict(_SEM_SIGLIP), pixel_layer=2, codebook_size=4096, code_dim=32,
            decoder_width=192, decoder_depth=4, decoder_heads=3)
  tt = titok.get_config("tiny").model
  tt.update(image_size=64, patch_size=8, encoder_width=192, encoder_depth=4, encoder_heads=3,
            decoder_width=192, decoder_depth=4, decoder_heads=3, num_latent_tokens=64,
            codebook_size=4096)
  return {"titok_64px": tt, "tokenflow_64px": tf, "dualtoken_64px": dt}


def semantic_suite(args) -> list[tuple[str, str, float, str]]:
  """Encode and decode throughput (images/s) of TokenFlow, DualToken and TexTok next to a TiTok of
  similar size (64 px, 64 tokens, width-192 transformers; float32), batch --batch (default 8)."""
  from jaxtok import tokenizers
  rows = Rows()
  batch = args.batch or 8
  for name, model in _semantic_configs().items():
    def one(name=name, model=model):
      stage(f"{name}: building")
      tok = tokenizers.build(model)
      params = jax.block_until_ready(tok.init(jax.random.key(0)))
      n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
      images = jnp.asarray(np.random.default_rng(0).random((batch, 64, 64, 3)), jnp.float32)
      stage(f"{name}: compiling encode")
      tokens = jax.block_until_ready(tok.encode(params, images).tokens)
      t_enc = time_call(lambda: tok.encode(params, images).tokens, args.repeats, jax.block_until_ready)
      note = f"{n_params / 1e6:.1f}M params, tokens {tuple(tokens.shape[1:])}"
      rows.append((f"{name} encode, batch {batch}", "jaxtok", t_enc * 1e3,
                   f"{batch / t_enc:.3g} images/s; {note}"))
      stage(f"{name}: compiling decode")
      jax.block_until_ready(tok.decode(params, tokens))
      t_dec = time_call(lambda: tok.decode(params, tokens), args.repeats, jax.block_until_ready)
      rows.append((f"{name} decode, batch {batch}", "jaxtok", t_dec * 1e3,
                   f"{batch / t_dec:.3g} images/s"))
    _recording_failure(rows, f"{name}, batch {batch}", "jaxtok", one)
  _recording_failure(rows, f"textok_64px, batch {batch}", "jaxtok",
                     lambda: _textok_rows(args, batch, rows))
  return rows


def _textok_rows(args, batch, rows):
  """TexTok at the suite's size (64 image tokens, width 192, 4 blocks each side) with a random 2-block
  T5 (width 128) over 16-word captions: through its module (the build facade takes no captions)."""
  from flax import nnx
  from jaxtok.configs import textok
  from jaxtok.data import captions
  from jaxtok.tokenizers import textok as textok_lib
  model = textok.get_config("tiny").model
  model.update(image_size=64, patch_size=8, num_latent_tokens=64, token_size=8, width=192, depth=4,
               num_heads=3, t5=dict(model.t5, width=128, depth=2, num_heads=2, head_dim=64,
                                    mlp_hidden=256))
  stage("textok_64px: building")
  graphdef, params = jax.jit(lambda: nnx.split(textok_lib.make_model(model, rngs=nnx.Rngs(0))))()
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  vocab = captions.WordVocab()
  texts = [list(captions.CAPTIONS.values())[i % len(captions.CAPTIONS)] for i in range(batch)]
  ids, mask = (jnp.asarray(a) for a in vocab.encode(texts, length=16))
  images = jnp.asarray(np.random.default_rng(0).random((batch, 64, 64, 3)), jnp.float32)
  enc = jax.jit(lambda p: nnx.merge(graphdef, p).encode(images, ids, mask).tokens)
  dec = jax.jit(lambda p, t: nnx.merge(graphdef, p).decode(t, ids, mask))
  stage("textok_64px: compiling encode")
  tokens = jax.block_until_ready(enc(params))
  t_enc = time_call(lambda: enc(params), args.repeats, jax.block_until_ready)
  rows.append((f"textok_64px encode, batch {batch}", "jaxtok", t_enc * 1e3,
               f"{batch / t_enc:.3g} images/s; {n_params / 1e6:.1f}M params (T5 included), tokens "
               f"{tuple(tokens.shape[1:])} float, captions of 16 ids"))
  stage("textok_64px: compiling decode")
  jax.block_until_ready(dec(params, tokens))
  t_dec = time_call(lambda: dec(params, tokens), args.repeats, jax.block_until_ready)
  rows.append((f"textok_64px decode, batch {batch}", "jaxtok", t_dec * 1e3,
               f"{batch / t_dec:.3g} images/s (T5 run on the captions inside)"))


# ---- MaskGen-KL: the continuous MaskGen (MM-DiT backbone + MAR's DDPM head) beside MaskGen-VQ

def maskgen_kl_suite(args) -> list[tuple[str, str, float, str]]:
  """MaskGen-KL at a small size (random weights; 32 tokens of 16 dims, W128 L4, head 128 x 2, 77
  random text features of width 256), batch --batch (default 4): the release's guided sampling (32
  iterations, CFG 3 linear) with 100 and with 25 DDPM head steps, MaskGen-VQ's guided sampling on
  the same backbone (16 steps, 1024 codes), and one training loss-and-gradient evaluation."""
  from flax import nnx
  from jaxtok.generators import maskgen, maskgen_kl
  b = args.batch or 4
  reps = max(1, args.repeats // 3)
  rows = Rows()
  rng = np.random.default_rng(0)
  backbone = dict(seq_len=32, width=128, depth=4, heads=4, text_dim=256, micro_condition=True,
                  micro_condition_dim=64)
  cond = {"text": jnp.asarray(rng.normal(size=(b, 77, 256)), jnp.float32),
          "pooled": jnp.asarray(rng.normal(size=(b, 256)), jnp.float32)}
  null = {k: v[:1] for k, v in cond.items()}
  g, p = nnx.split(maskgen_kl.make_model(dict(backbone, token_dim=16, head_width=128, head_depth=2),
                                         rngs=nnx.Rngs(0)))
  for respacing in ("100", "25"):
    stage(f"maskgen_kl: sample, {respacing} head steps")
    run = jax.jit(lambda p, key, r=respacing: maskgen_kl.sample(nnx.merge(g, p), key, cond, null,
                                                                head_respacing=r))
    t = time_call(lambda: run(p, jax.random.key(1)), reps, jax.block_until_ready)
    rows.append((f"MaskGen-KL sample 32 x 16-dim tokens, batch {b}", f"jaxtok, 32 guided "
                 f"iterations, {respacing} DDPM steps", t * 1e3,
                 f"{b / t:.3g} images/s (tokens only); W128 L4, head 128x2, 77 text tokens"))
  stage("maskgen_kl: MaskGen-VQ sample")
  gv, pv = nnx.split(maskgen.make_model(dict(backbone, codebook_size=1024, num_classes=0),
                                        rngs=nnx.Rngs(0)))
  run_vq = jax.jit(lambda p, key: maskgen.sample(nnx.merge(gv, p), key, cond, null))
  t = time_call(lambda: run_vq(pv, jax.random.key(1)), reps, jax.block_until_ready)
  rows.append((f"MaskGen-VQ sample 32 tokens, batch {b}", "jaxtok, 16 guided steps", t * 1e3,
               f"{b / t:.3g} images/s (tokens only); the same backbone, 1024 codes"))
  stage("maskgen_kl: loss and gradient")
  tokens = jnp.asarray(rng.normal(size=(b, 32, 16)), jnp.float32)
  labels = dict(cond, null_text=jnp.zeros_like(cond["text"]), null_pooled=jnp.zeros_like(cond["pooled"]))
  grad = jax.jit(jax.grad(lambda p, key: maskgen_kl.loss(nnx.merge(g, p), tokens, labels,
                                                         rng=key)[0]))
  t = time_call(lambda: grad(p, jax.random.key(2)), reps, jax.block_until_ready)
  rows.append((f"MaskGen-KL loss + gradient, batch {b}", "jaxtok (diffusion batch x4)", t * 1e3,
               f"{b / t:.3g} samples/s"))
  return rows


def cross_suite(args) -> list[tuple[str, str, float, str]]:
  """Cross-attention in the shared Block: D-AR's velocity network (256 patches, a group of 32
  conditions; width 128, 2 layers, batch 4) with cross="ada" beside the in-context layout it
  replaced (AdaLN blocks over [patches; conditions]); then decoding 64 tokens with a causal
  cross="residual" stack reading a 77-token context: KV cache with the context's keys/values
  computed once, against recomputing prefix and context at every step."""
  from flax import nnx
  from jaxtok.nn.block import Block
  from jaxtok.nn.rope import grid_positions
  from jaxtok.nn.stack import Stack

  rows = Rows()
  b, width, depth, heads, p, g = args.batch or 4, 128, 2, 4, 256, 32
  reps = max(1, args.repeats // 2)
  rs = np.random.default_rng(0)
  x = jnp.asarray(rs.standard_normal((b, p, width)), jnp.float32)
  c = jnp.asarray(rs.standard_normal((b, g, width)), jnp.float32)
  t = jnp.asarray(rs.standard_normal((b, width)), jnp.float32)

  def built(**block):
    make = lambda r: Block(width, heads, mlp_hidden=4 * width, norm_eps=1e-6, rngs=r, **block)
    return nnx.split(Stack(depth, make, rngs=nnx.Rngs(0)))

  stage("cross: D-AR velocity stacks")
  cg, cp = built(adaln=True, cross="ada", context_mlp="silu", mlp="silu", rope="2d")
  pos = grid_positions(16, 16)
  run_cross = jax.jit(lambda s: nnx.merge(cg, s)(x, cond=t, context=c, positions=pos))
  ig, ip = built(adaln=True, ada_segments=2)
  run_cat = jax.jit(lambda s: nnx.merge(ig, s)(jnp.concatenate([x, c], axis=1), cond=t,
                                               segments=(p, g))[:, :p])
  for name, fn, params in (("cross-attention to the group (cross='ada')", run_cross, cp),
                           ("in-context [patches; group] self-attention", run_cat, ip)):
    ms = time_call(lambda: fn(params), reps, jax.block_until_ready) * 1e3
    rows.append((f"D-AR velocity {p} patches + {g} conditions, {depth}x{width}, batch {b}", name, ms,
                 f"{b / ms * 1e3:.0f} calls/s"))

  stage("cross: cached decoding against a context")
  n, s_ctx = 64, 77
  dg, dp = built(cross="residual", rope="1d")
  ctx = jnp.asarray(rs.standard_normal((b, s_ctx, width)), jnp.float32)
  seq = jnp.asarray(rs.standard_normal((b, n, width)), jnp.float32)

  @jax.jit
  def cached(state):
    m = nnx.merge(dg, state)
    def body(cache, i):
      y, cache = m.extend(jax.lax.dynamic_slice_in_dim(seq, i, 1, axis=1), cache, i)
      return cache, y[:, 0]
    return jax.lax.scan(body, m.init_cache(b, n, context=ctx), jnp.arange(n))[1]

  @jax.jit
  def recompute(state):
    m = nnx.merge(dg, state)
    mask = jnp.tril(jnp.ones((n, n), bool))
    def body(_, i):  # the prefix (inputs after i zeroed, so XLA cannot hoist the call out of the
      # loop) and the context's keys/values again, every step
      prefix = jnp.where((jnp.arange(n) <= i)[None, :, None], seq, 0.0)
      return None, jax.lax.dynamic_index_in_dim(m(prefix, mask=mask, context=ctx), i, axis=1,
                                                keepdims=False)
    return jax.lax.scan(body, None, jnp.arange(n))[1]

  for name, fn in (("KV cache, context keys/values once", cached),
                   ("recompute prefix + context each step", recompute)):
    ms = time_call(lambda: fn(dp), reps, jax.block_until_ready) * 1e3
    rows.append((f"decode {n} tokens, {s_ctx}-token context, {depth}x{width}, batch {b}", name, ms,
                 f"{b * n / ms * 1e3:.0f} tokens/s"))
  return rows


def flowtok_suite(args) -> list[tuple[str, str, float, str]]:
  """FlowTok text-to-image sampling (random weights, random 77-token caption features of width 256)
  beside MaskGen-VQ at the same transformer width and depth (W128 L4, the text suite's MaskGen):
  images/s and generated tokens/s at --batch (default 8)."""
  from flax import nnx
  from jaxtok.generators import flowtok, maskgen
  b = args.batch or 8
  rows = Rows()
  rng = np.random.default_rng(0)
  text = jnp.asarray(rng.normal(0, 1, (b, 77, 256)), jnp.float32)
  pooled = jnp.asarray(rng.normal(0, 1, (b, 256)), jnp.float32)
  stage("flowtok: building")
  fcfg = dict(token_dim=16, seq_len=77, text_dim=256, pooled_dim=256, width=128, depth=4, heads=4,
              projector_width=128, projector_depth=1, projector_heads=4, align_hidden=256)
  fdef, fparams = nnx.split(flowtok.make_model(fcfg, rngs=nnx.Rngs(0)))
  for steps, scale in ((16, 7.0), (50, 7.0), (16, 1.0)):
    run = jax.jit(lambda p, key, steps=steps, scale=scale: flowtok.sample(
        nnx.merge(fdef, p), key, {"text": text, "pooled": pooled}, steps=steps, cfg_scale=scale))
    stage(f"flowtok: {steps} steps, cfg {scale}")
    t = time_call(lambda: run(fparams, jax.random.key(1)), max(1, args.repeats // 2),
                  jax.block_until_ready)
    kind = "guided (2 velocity calls/step)" if scale != 1.0 else "unguided"
    rows.append((f"FlowTok sample 77x16 tokens, {steps} Euler steps {kind}, batch {b}", "jaxtok",
                 t * 1e3, f"{b / t:.3g} images/s, {77 * b / t:.4g} tokens/s; W128 L4 + 1-block "
                 f"projector"))
  stage("flowtok: MaskGen-VQ reference")
  gcfg = dict(codebook_size=1024, seq_len=32, num_classes=0, width=128, depth=4, heads=4,
              text_dim=256, micro_condition=True, micro_condition_dim=64)
  gdef, gparams = nnx.split(maskgen.make_model(gcfg, rngs=nnx.Rngs(0)))
  cond = {"text": text, "pooled": pooled}
  null = {k: v[:1] for k, v in cond.items()}
  sample = jax.jit(lambda p, key: maskgen.sample(nnx.merge(gdef, p), key, cond, null))
  t = time_call(lambda: sample(gparams, jax.random.key(1)), max(1, args.repeats // 2),
                jax.block_until_ready)
  rows.append((f"MaskGen-VQ sample 32 tokens, 16 guided steps, batch {b}", "jaxtok", t * 1e3,
               f"{b / t:.3g} images/s, {32 * b / t:.4g} tokens/s; W128 L4, 77 text tokens"))
  return rows


# ---- captions: the host-side cost of caption-carrying batches (tools/train.py, train_generator.py)

def captions_suite(args) -> list[tuple[str, str, float, str]]:
  """What captions add to the input path, per batch on the host: photo crops alone against the same
  crops carrying the released TA-TiTok's caption features (CLIP ViT-L/14: 77 x 768 float32 per
  crop, a random table) or TexTok's word ids; and a text-conditioned generator's labels built from
  a captioned token dataset (MaskGen's condition + the empty caption's) against plain class ids.
  --batch (default 32), 64 px crops."""
  import tempfile
  from jaxtok.data import captions as captions_lib
  from jaxtok.data import photo_captions, photos
  from jaxtok.data import tokens as token_data
  from jaxtok.generators import maskgen
  from jaxtok.train import generator
  b = args.batch or 32
  rows = Rows()
  rng = np.random.default_rng(0)
  train, texts = photo_captions.captioned_photos()
  stage("captions: crop batches")
  plain = photos.PhotoCrops(train, image_size=64, global_batch=b, seed=0)
  clip = photo_captions.CaptionedCrops(
      train, {"text_features": rng.standard_normal((len(train), 77, 768)).astype(np.float32)},
      image_size=64, global_batch=b, seed=0)
  ids, mask = captions_lib.WordVocab().encode(texts, 12)
  words = photo_captions.CaptionedCrops(train, {"text_ids": ids, "text_mask": mask},
                                        image_size=64, global_batch=b, seed=0)
  t_plain = time_call(lambda: next(plain), args.repeats, lambda x: x)
  rows.append((f"photo crops 64px, batch {b}", "images only", t_plain * 1e3,
               f"{b / t_plain:.3g} crops/s"))
  for name, data, note in (("TA-TiTok caption features 77x768", clip, "float32 rows"),
                           ("TexTok caption word ids 12", words, "int32 + mask rows")):
    t = time_call(lambda: next(data), args.repeats, lambda x: x)
    rows.append((f"photo crops 64px + {name}, batch {b}", "captioned", t * 1e3,
                 f"{b / t:.3g} crops/s; {t / t_plain:.2f}x the images-only batch ({note})"))
  stage("captions: generator labels")
  with tempfile.TemporaryDirectory() as tmp:
    n, p = 4 * b, len(texts)
    feats = {"tokens": rng.standard_normal((p + 1, 77, 768)).astype(np.float32),
             "penultimate": rng.standard_normal((p + 1, 77, 768)).astype(np.float32),
             "pooled": rng.standard_normal((p + 1, 768)).astype(np.float32)}
    path = os.path.join(tmp, "tokens")
    caption_ids = rng.integers(0, p, n)
    token_data.write_token_dataset(path, rng.integers(0, 8192, (n, 128)), caption_ids,
                                   {"codebook_size": 8192},
                                   captions={"ids": caption_ids, "texts": texts, "features": feats})
    it = token_data.token_iterator(path, batch_size=b, seed=0)
    to_text = generator.text_labels(maskgen, path)
    t_ids = time_call(lambda: next(it), args.repeats, lambda x: x)
    rows.append((f"token batch 128 tokens, batch {b}", "class ids", t_ids * 1e3,
                 f"{b / t_ids:.3g} examples/s"))
    t_text = time_call(lambda: to_text(next(it)), args.repeats, lambda x: x)
    rows.append((f"token batch 128 tokens + MaskGen text condition, batch {b}", "captioned",
                 t_text * 1e3, f"{b / t_text:.3g} examples/s; {t_text / t_ids:.2f}x; condition + "
                 "null rows of 77x768 CLIP features"))
  return rows


# ---- spm: the pure-Python SentencePiece encoder (TexTok's caption ids for the released T5)

def spm_suite(args) -> list[tuple[str, str, float, str]]:
  """Host cost of caption ids: `text.sentencepiece` (pure-Python unigram Viterbi + nmt_nfkc charsmap)
  on the test fixture model (261 pieces) against `data.captions.WordVocab`, for a batch of --batch
  (default 32) captions of the bundled photographs cut / padded to 24 ids, plus one model load."""
  from jaxtok.data import captions as captions_lib
  from jaxtok.text import sentencepiece
  b = args.batch or 32
  rows = Rows()
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                      "fixtures", "sentencepiece", "tiny_unigram.model")
  texts = [list(captions_lib.CAPTIONS.values())[i % len(captions_lib.CAPTIONS)] for i in range(b)]
  stage("spm: load")
  t_load = time_call(lambda: sentencepiece.SentencePiece.from_file(path), args.repeats, lambda x: x)
  rows.append(("spiece model load (fixture: 261 pieces, 238 KB nmt_nfkc charsmap)", "jaxtok",
               t_load * 1e3, "parse + piece table"))
  sp, vocab = sentencepiece.load(path), captions_lib.WordVocab()
  stage("spm: encode")
  t_words = time_call(lambda: vocab.encode(texts, 24), args.repeats, lambda x: x)
  rows.append((f"caption ids, batch {b}, L 24", "WordVocab", t_words * 1e3,
               f"{b / t_words:.4g} captions/s"))
  t_norm = time_call(lambda: [sp.normalize(t) for t in texts], args.repeats, lambda x: x)
  rows.append((f"normalise only (charsmap), batch {b}", "sentencepiece", t_norm * 1e3,
               f"{b / t_norm:.4g} captions/s"))
  t_sp = time_call(lambda: sp.ids(texts, 24), args.repeats, lambda x: x)
  rows.append((f"caption ids, batch {b}, L 24", "sentencepiece", t_sp * 1e3,
               f"{b / t_sp:.4g} captions/s; {t_sp / t_words:.1f}x WordVocab"))
  return rows


# ---- GPSToken's generator: the release's SDE sampler over M128-shaped tokens

def gpstoken_gen_suite(args) -> list[tuple[str, str, float, str]]:
  """Rows (case, implementation, ms per batch, images/s): `gpstoken_gen.sample` over 128 tokens of
  21 channels (GPSToken-M128's shape) with a small SiT (W 128, L 4, 4 heads; the release's is
  SiT-XL), the release's SDE (Euler-Maruyama) with 250 steps and with 50, guided (cfg 1.5 on t in
  [0.2, 1]: a 2B batch per step) and unguided. --other-batch (default 4), --repeats."""
  from flax import nnx
  from jaxtok.generators import gpstoken_gen
  b, s, d = args.other_batch or 4, 128, 21
  rows = Rows()
  stage("gpstoken_gen: building")
  gdef, gparams = nnx.split(gpstoken_gen.make_model(dict(token_dim=d, seq_len=s, num_classes=1000,
                                                         width=128, depth=4, heads=4),
                                                    rngs=nnx.Rngs(0)))
  layout = jnp.asarray(np.random.default_rng(0).uniform(0.05, 0.5, (b, s, 5)), jnp.float32)
  labels = jnp.arange(b, dtype=jnp.int32)
  mean, std = jnp.asarray(gpstoken_gen.RELEASED_MEAN), jnp.asarray(gpstoken_gen.RELEASED_STD)
  for steps, scale in ((250, 1.5), (250, 1.0), (50, 1.5)):
    run = jax.jit(lambda p, key, steps=steps, scale=scale: gpstoken_gen.sample(
        nnx.merge(gdef, p), key, labels, layout, mean, std, steps=steps, cfg_scale=scale,
        guidance_low=0.2, guidance_high=1.0))
    stage(f"gpstoken_gen: {steps} steps, cfg {scale}")
    t = time_call(lambda: run(gparams, jax.random.key(1)), max(1, args.repeats // 3),
                  jax.block_until_ready)
    kind = "cfg 1.5 on t in [0.2, 1] (2B batch)" if scale != 1.0 else "unguided"
    rows.append((f"GPSToken generator SDE, {steps} steps, {kind}, 128x21 tokens, batch {b}",
                 "jaxtok", t * 1e3, f"{b / t:.3g} images/s; SiT W128 L4 (release: XL)"))
  return rows


# ---- Instella-T2I as released: the binary autoencoder and the bit generators' release options

def instella_suite(args) -> list[tuple[str, str, float, str]]:
  """Rows (case, implementation, ms per batch, images/s): the released binary autoencoder
  (`tokenizers.instella_bae`) at reduced width (256 px, patch 16, 128 tokens of 64 bits, W 256 L 4
  H 4 each side, one resize after block 1, RoPE scale 32; the release: W 768 / 1024, L 12 / 16 at
  512 px) encoding and decoding; the binary-diffusion sampler (20 steps) with protocol 1 and 2 and
  the AR sampler with delta 0 and 0.5, over 128 x 64 bits with a W 128 L 4 trunk. --other-batch
  (default 4), --repeats."""
  from flax import nnx
  from jaxtok.generators import binary_ar, binary_diffusion
  from jaxtok.samplers import binary_diffusion as bd_sampler
  from jaxtok.tokenizers import api
  b = args.other_batch or 4
  reps = max(1, args.repeats // 3)
  rows = Rows()
  stage("instella: autoencoder")
  tok = api.build(dict(name="instella_bae", image_size=256, patch_size=16, num_latent_tokens=128,
                       bits=64, encoder_width=256, encoder_depth=4, encoder_heads=4,
                       decoder_width=256, decoder_depth=4, decoder_heads=4, downsample_idx=(1,),
                       upsample_idx=(1,), axes_dim=(8, 28, 28), rope_scale=32.0))
  params = tok.init(jax.random.key(0))
  images = jax.random.uniform(jax.random.key(1), (b, 256, 256, 3))
  tokens = tok.encode(params, images).tokens
  t_enc = time_call(lambda: tok.encode(params, images).tokens, reps, jax.block_until_ready)
  rows.append((f"Instella BAE encode 256 px -> 128x64 bits, batch {b}", "jaxtok", t_enc * 1e3,
               f"{b / t_enc:.3g} images/s; W256 L4"))
  t_dec = time_call(lambda: tok.decode(params, tokens), reps, jax.block_until_ready)
  rows.append((f"Instella BAE decode 128x64 bits -> 256 px, batch {b}", "jaxtok", t_dec * 1e3,
               f"{b / t_dec:.3g} images/s; W256 L4"))
  kw = dict(num_bits=64, seq_len=128, num_classes=10, width=128, depth=4, heads=4)
  diff = binary_diffusion.make_model(dict(kw, time_sampling="logit_normal"), rngs=nnx.Rngs(0))
  gd, gp = nnx.split(diff)
  labels = jnp.arange(b, dtype=jnp.int32) % 10
  for protocol in (1, 2):
    stage(f"instella: diffusion protocol {protocol}")
    run = jax.jit(lambda p, key, protocol=protocol: bd_sampler.sample(
        key, lambda x, t, c: nnx.merge(gd, p)(x, t, c), (b, 128, 64), steps=20, cond=labels,
        uncond=jnp.full_like(labels, -1), cfg_scale=7.5, protocol=protocol))
    t = time_call(lambda: run(gp, jax.random.key(2)), reps, jax.block_until_ready)
    rows.append((f"binary diffusion 20 steps, protocol {protocol}, cfg w 7.5, batch {b}", "jaxtok",
                 t * 1e3, f"{b / t:.3g} images/s; W128 L4"))
  ar = binary_ar.make_model(kw, rngs=nnx.Rngs(0))
  ad, ap = nnx.split(ar)
  for delta in (0.0, 0.5):
    stage(f"instella: AR delta {delta}")
    run = jax.jit(lambda p, key, delta=delta: binary_ar.sample(
        key, nnx.merge(ad, p), labels, cfg_scale=7.5, guided=True, delta=delta))
    t = time_call(lambda: run(ap, jax.random.key(3)), reps, jax.block_until_ready)
    rows.append((f"binary AR 128 tokens, delta {delta}, cfg w 7.5, batch {b}", "jaxtok", t * 1e3,
                 f"{b / t:.3g} images/s; W128 L4" + ("; bits drawn one by one" if delta else "")))
  return rows


# ---- HF tokenizer.json byte-level BPE (Instella-T2I's OLMo prompt tokenizer)

def hf_bpe_suite(args) -> list[tuple[str, str, float, str]]:
  """Host cost of prompt ids: `text.hf_bpe` (pure-Python added-token split, NFC, GPT-2 pattern,
  BPE merge queue) on the test fixture (tiny byte-level BPE: vocab 1000 + 6 added tokens, 742
  merges, OLMo-like GPTNeoX config): `batch` of --batch (default 32) prompts at max_length 128,
  left-padded (the release's call), with the per-piece BPE cache cleared before every call (cold)
  and kept (warm), plus one load and the one-off Unicode class build."""
  import json
  from jaxtok.data import captions as captions_lib
  from jaxtok.text import hf_bpe
  b = args.batch or 32
  rows = Rows()
  d = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                   "fixtures", "hf_bpe")
  files = [os.path.join(d, n) for n in ("tokenizer.json", "tokenizer_config.json",
                                         "special_tokens_map.json")]
  stage("hf_bpe: load")

  def classes():
    hf_bpe._classes.cache_clear()
    hf_bpe.gpt2_pattern.cache_clear()
    return hf_bpe.gpt2_pattern()

  t_cls = time_call(classes, max(1, args.repeats // 5), lambda x: x)
  rows.append(("Unicode \\p{L} / \\p{N} / \\s classes + GPT-2 pattern (once per process)",
               "jaxtok", t_cls * 1e3, "unicodedata scan of 1.1M code points"))
  t_load = time_call(lambda: hf_bpe.ByteLevelBPE.from_file(*files), args.repeats, lambda x: x)
  rows.append(("tokenizer.json + config load (fixture: vocab 1000, 742 merges, 6 added)", "jaxtok",
               t_load * 1e3, "parse + merge table"))
  tok = hf_bpe.ByteLevelBPE.from_file(*files)
  with open(os.path.join(d, "golden.json"), encoding="utf-8") as f:
    prompts = json.load(f)["texts"]
  short = list(captions_lib.CAPTIONS.values())
  sets = {"bundled captions (4-6 words)": [short[i % len(short)] for i in range(b)],
          # the fixture's first prompts (multilingual, emoji, whitespace) and its two long ones
          "fixture prompts (multilingual, emoji, 2 long)": [prompts[i % (len(prompts) - 2)]
                                                           for i in range(b - 2)] + prompts[-2:]}
  for name, texts in sets.items():
    stage(f"hf_bpe: {name}")
    n_ids = int(tok.batch(texts, max_length=128)[1].sum())

    def cold(texts=texts):
      tok._cache.clear()
      return tok.batch(texts, max_length=128)

    t_cold = time_call(cold, args.repeats, lambda x: x)
    rows.append((f"batch {b} {name}, max_length 128, left pad, cold BPE cache", "jaxtok",
                 t_cold * 1e3, f"{b / t_cold:.4g} prompts/s; {n_ids} ids"))
    t_warm = time_call(lambda texts=texts: tok.batch(texts, max_length=128), args.repeats,
                       lambda x: x)
    rows.append((f"batch {b} {name}, max_length 128, left pad, warm BPE cache", "jaxtok",
                 t_warm * 1e3, f"{b / t_warm:.4g} prompts/s"))
  return rows


def olmo_suite(args) -> list[tuple[str, str, float, str]]:
  """Rows (case, implementation, ms per batch, prompts/s): every layer's hidden state of an OLMo v1
  tower (`nn.olmo`, HF hidden_states[1:], Instella-T2I's text condition) at reduced size (W 256,
  L 4, H 4, MLP 1024, vocab 50304; AMD-OLMo-1B: W 2048, L 16, MLP 8192), random weights, left
  padded prompts (a quarter of each row padding), float32 and bfloat16 at 32 tokens, float32 at
  the release's 128. --batch (default 8), --repeats."""
  from flax import nnx
  from jaxtok.nn import olmo
  b = args.batch or 8
  rows = Rows()
  cfg = dict(width=256, depth=4, num_heads=4, mlp_hidden=1024, vocab_size=50304)
  params = nnx.state(olmo.make_model(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  rng = np.random.default_rng(0)
  for t, dtype in ((32, "float32"), (32, "bfloat16"), (128, "float32")):
    stage(f"olmo: T {t} {dtype}")
    fn = jax.jit(olmo.hidden_states_fn(dict(cfg, dtype=dtype)))
    ids = jnp.asarray(rng.integers(3, 50304, (b, t)), jnp.int32)
    mask = jnp.asarray(np.arange(t)[None] >= t // 4, jnp.int32).repeat(b, 0)
    sec = time_call(lambda: fn(params, ids, mask), args.repeats, jax.block_until_ready)
    rows.append((f"OLMo hidden states W256 L4, {t} tokens, batch {b}, {dtype}", "jaxtok", sec * 1e3,
                 f"{b / sec:.3g} prompts/s; output [4, {b}, {t}, 256] float32"))
  return rows


# ---- Instella-T2I's released text-to-image generators (text-conditioned networks)

def instella_t2i_suite(args) -> list[tuple[str, str, float, str]]:
  """Rows (case, implementation, ms per sample call, steps/s or tokens/s): the released
  text-conditioned networks (`generators.instella_diff` / `instella_ar`) at a small size (W 128,
  4 layers of 4 heads; the release: W 2048, 16 x 16) over the release's 128 tokens of 64 bits, with
  random text features of 16 tokens x 256 (the release: AMD-OLMo-1B's 2048), one row left-padded,
  and an empty-prompt null row: the diffusion sampler (20 guided steps, protocol 1) and the AR
  sampler (128 guided tokens) with its KV cache and with the release's full recompute per token.
  --other-batch (default 2), --repeats."""
  from flax import nnx
  from jaxtok.generators import instella_ar, instella_diff
  b = args.other_batch or 2
  reps = max(1, args.repeats // 5)
  rows = Rows()
  kw = dict(num_bits=64, seq_len=128, text_dim=256, width=128, depth=4, heads=4)
  feats = jax.random.normal(jax.random.key(1), (4, b, 16, 256))
  mask = jnp.ones((b, 16), jnp.int32).at[0, :5].set(0)
  null = (jax.random.normal(jax.random.key(2), (4, 1, 16, 256)),
          jnp.zeros((1, 16), jnp.int32).at[0, -1].set(1))
  stage("instella_t2i: diffusion")
  gd, gp = nnx.split(instella_diff.make_model(kw, rngs=nnx.Rngs(0)))
  run = jax.jit(lambda p, key: instella_diff.sample(key, nnx.merge(gd, p), feats, mask, null=null,
                                                    steps=20, cfg_scale=7.5))
  t = time_call(lambda: run(gp, jax.random.key(3)), reps, jax.block_until_ready)
  rows.append((f"Instella-T2I diffusion 20 steps, cfg w 7.5, 128x64 bits, text 16, batch {b}",
               "jaxtok", t * 1e3, f"{20 / t:.3g} steps/s; W128 L4"))
  ad, ap = nnx.split(instella_ar.make_model(kw, rngs=nnx.Rngs(0)))
  for recompute in (False, True):
    stage(f"instella_t2i: AR, recompute={recompute}")
    run = jax.jit(lambda p, key, r=recompute: instella_ar.sample(
        key, nnx.merge(ad, p), feats, mask, null=null, cfg_scale=7.5, recompute=r))
    t = time_call(lambda: run(ap, jax.random.key(4)), reps, jax.block_until_ready)
    how = "full recompute per token (the release's way)" if recompute else "KV cache"
    rows.append((f"Instella-T2I AR 128 tokens, cfg w 7.5, {how}, text 16, batch {b}", "jaxtok",
                 t * 1e3, f"{128 * b / t:.3g} tokens/s; W128 L4"))
  return rows


# ---- Stable Diffusion's VAE (convert/ldm_vae.py onto FlexTokVAE): Layton's frozen latent space

def ldm_vae_suite(args) -> list[tuple[str, str, float, str]]:
  """Rows (case, implementation, ms per batch, images/s): encode (images [0, 1] -> posterior mean x
  0.18215) and decode (latents -> images) of a FlexTokVAE with sd-vae-ft-mse's released shapes
  (`convert.ldm_vae.RELEASED`: channels 128-256-512-512, 2 ResNets per level, GroupNorm 32, mid
  attention, 4 latent channels; random weights, PyTorch-style init) and of the tiny parity fixture's
  shape (8-16, 1 ResNet per level, 4 groups), both at 64 x 64 (8 x 8 x 4 latents). --other-batch
  (default 2; the tiny one runs 4x that), --repeats."""
  from flax import nnx
  from jaxtok.convert import ldm_vae
  b = args.other_batch or 2
  reps = max(1, args.repeats // 3)
  rows = Rows()
  tiny = dict(channels=(8, 16), latent_channels=4, layers_per_block=1, norm_groups=4,
              mid_attention=True, scaling_factor=0.18215)
  for label, cfg, batch in (("sd-vae-ft-mse shape (83.7M params)",
                             ldm_vae.RELEASED["stabilityai/sd-vae-ft-mse"], b),
                            ("tiny fixture shape", tiny, 4 * b)):
    stage(f"ldm_vae: init {label}")
    gdef = nnx.graphdef(nnx.eval_shape(lambda cfg=cfg: ldm_vae.make_model(cfg, rngs=nnx.Rngs(0))))
    params = jax.jit(lambda cfg=cfg: nnx.state(ldm_vae.make_model(cfg, rngs=nnx.Rngs(0))))()
    scale = cfg["scaling_factor"]
    enc = jax.jit(lambda p, x: nnx.merge(gdef, p).encode(x * 2.0 - 1.0)[0] * scale)
    dec = jax.jit(lambda p, z: nnx.merge(gdef, p).decode(z / scale))
    images = jax.random.uniform(jax.random.key(1), (batch, 64, 64, 3))
    stage(f"ldm_vae: encode {label}")
    t = time_call(lambda: enc(params, images), reps, jax.block_until_ready)
    rows.append((f"SD VAE encode 64 px -> 8x8x4, {label}, batch {batch}", "jaxtok", t * 1e3,
                 f"{batch / t:.3g} images/s"))
    latents = enc(params, images)
    stage(f"ldm_vae: decode {label}")
    t = time_call(lambda: dec(params, latents), reps, jax.block_until_ready)
    rows.append((f"SD VAE decode 8x8x4 -> 64 px, {label}, batch {batch}", "jaxtok", t * 1e3,
                 f"{batch / t:.3g} images/s"))
  return rows


# ---- float32 kernels, XLA:CPU beside PyTorch (issue 12 section 6: what a same-work speed-up can be)

def kernels_suite(args) -> list[tuple[str, str, float, str]]:
  """Rows (case, implementation, ms, GFLOP/s): the float32 GEMMs and the 3x3 convolution that
  TiTok's encoders/decoders and an AR step at RAR's size are made of, jitted in jaxtok's JAX and,
  when torch is installed (the bench venv), in PyTorch on the same threads; fastest of --repeats
  calls. "M=32 streamed" multiplies 32 rows by 48 distinct [768, 4608] weights in sequence (680 MB,
  more than any cache: an AR step reads its weights from memory), the others repeat one call."""
  try:
    import torch
  except ImportError:
    torch = None
  if torch is not None:
    torch.set_num_threads(os.cpu_count() or 1)
  rows = Rows()
  reps = max(3, args.repeats // 2)

  def best(fn):
    fn()
    times = []
    for _ in range(reps):
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
    return min(times)

  def pair(case, flops, ours, theirs):
    stage(f"kernels: {case}")
    t = best(ours)
    rows.append((case, "jaxtok (XLA:CPU)", t * 1e3, f"{flops / t / 1e9:.0f} GFLOP/s"))
    if torch is not None:
      with torch.no_grad():
        t2 = best(theirs)
      rows.append((case, f"PyTorch {torch.__version__}", t2 * 1e3,
                   f"{flops / t2 / 1e9:.0f} GFLOP/s; XLA / PyTorch {t2 / t:.2f}x"))

  rng = np.random.default_rng(0)
  mm = jax.jit(lambda a, b: a @ b)
  for m, k, n, what in ((3080, 512, 2048, "TiTok-S encoder MLP, batch 8"),
                        (2568, 1024, 4096, "TiTok-L decoder MLP, batch 8"),
                        (32, 768, 4608, "AR step at RAR's size (adaLN), weight cached")):
    a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    ta, tb = (torch.from_numpy(a), torch.from_numpy(b)) if torch is not None else (None, None)
    pair(f"matmul [{m}, {k}] x [{k}, {n}] ({what})", 2 * m * k * n,
         lambda: jax.block_until_ready(mm(ja, jb)), lambda: ta @ tb)
  ws = rng.standard_normal((48, 768, 4608), np.float32)
  x = rng.standard_normal((32, 768), np.float32)
  chain = jax.jit(lambda x, ws: jax.lax.scan(lambda c, w: ((c @ w)[:, :768] * 1e-3 + c, None),
                                             x, ws)[0])
  jws, jx = jnp.asarray(ws), jnp.asarray(x)
  tws, tx = ([torch.from_numpy(w) for w in ws], torch.from_numpy(x)) if torch is not None else ([], None)

  def torch_chain():
    c = tx
    for w in tws:
      c = (c @ w)[:, :768] * 1e-3 + c
    return c
  pair("matmul M=32 streamed: 32 rows x 48 distinct [768, 4608] weights", 2 * 32 * 768 * 4608 * 48,
       lambda: jax.block_until_ready(chain(jx, jws)), torch_chain)
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  for bsz, side, c in ((8, 256, 128), (8, 128, 256)):
    xi = rng.standard_normal((bsz, side, side, c), np.float32)
    wi = rng.standard_normal((3, 3, c, c), np.float32) * 0.05
    jx2, jw2 = jnp.asarray(xi), jnp.asarray(wi)
    if torch is not None:
      tconv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
      tconv.weight.data = torch.from_numpy(wi.transpose(3, 2, 0, 1).copy())
      tx2 = torch.from_numpy(xi.transpose(0, 3, 1, 2).copy())
    pair(f"conv 3x3 {bsz} x {side} x {side} x {c} -> {c} (MaskGIT-VQGAN decoder)",
         2 * bsz * side * side * c * c * 9, lambda: jax.block_until_ready(conv(jx2, jw2)),
         (lambda: tconv(tx2)) if torch is not None else None)
  return rows


SUITES = {"quantizers": quantizer_suite, "tokenizers": tokenizer_suite, "train": train_suite,
          "samplers": sampler_suite, "data": data_suite,
          "official": official_suite,
          # second-wave models: one line each
          "ecar": ecar_suite,
          "gaussian_layton": gaussian_layton_suite,
          "text": text_suite,
          "dimwise": dimwise_suite,
          "speculative": speculative_suite,
          "next_x": next_x_suite,
          "resgen": resgen_suite,
          "semantic": semantic_suite,
          "maskgen_kl": maskgen_kl_suite,
          "cross": cross_suite,
          "flowtok": flowtok_suite,
          "captions": captions_suite,
          "spm": spm_suite,
          "gpstoken_gen": gpstoken_gen_suite,
          "instella": instella_suite,
          "hf_bpe": hf_bpe_suite,
          "olmo": olmo_suite,
          "instella_t2i": instella_t2i_suite,
          "ldm_vae": ldm_vae_suite,
          "kernels": kernels_suite,
          }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--suite", choices=sorted(SUITES), default=None,
                      help="default: official with --compare-official, else quantizers")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed calls per case (default 10; 2 rounds for --suite official)")
  parser.add_argument("--vq-vectors", type=int, default=16384)
  parser.add_argument("--compare-torch", action="store_true",
                      help="also time vector-quantize-pytorch (pip install '.[bench]')")
  parser.add_argument("--models", default=None, help="comma-separated names (tokenizers/train)")
  parser.add_argument("--batch", type=int, default=None, help="batch size (tokenizers/train)")
  parser.add_argument("--dtype", default=None, help="compute dtype override, e.g. bfloat16")
  parser.add_argument("--flow-steps", type=int, default=25, help="FlexTok decoder Euler steps")
  parser.add_argument("--ar-batch", type=int, default=16)
  parser.add_argument("--ar-tokens", type=int, default=256,
                      help="samplers: tokens per AR sample (a square number: Token-Shuffle and NAR "
                           "read them as a grid)")
  parser.add_argument("--ar-size", default="768x12",
                      help="samplers: WIDTHxDEPTH of the AR models (GPT, Token-Shuffle, NAR)")
  parser.add_argument("--skip-ar", action="store_true",
                      help="samplers: skip the autoregressive KV-cache vs recompute rows")
  parser.add_argument("--ar-only", action="store_true",
                      help="samplers: only the autoregressive KV-cache vs recompute rows")
  parser.add_argument("--other-batch", type=int, default=None,
                      help="batch of the MaskGIT / masked-diffusion / MAR rows (default --ar-batch)")
  # ImageNet's photos are mostly ~500x375; 2000x1500 is a phone photo, 8000x8000 the issue's PNG.
  parser.add_argument("--data-sizes", default="500x375,2000x1500,8000x8000",
                      help="data: comma-separated WxH photo sizes resized to 256")
  parser.add_argument("--compare-official", default=None, metavar="PATH",
                      help="a bytedance/1d-tokenizer checkout: time its TiTok and RAR beside "
                           "jaxtok's (suite 'official', the default with this option; needs torch, "
                           "einops, omegaconf)")
  parser.add_argument("--breakdown", action="store_true",
                      help="official: also time the MaskGIT-VQGAN pixel decoder alone")
  parser.add_argument("--rar-depth", type=int, default=12, help="official: RAR/GPT layers")
  parser.add_argument("--ar-segment", type=int, default=32,
                      help="official: jaxtok's sampler segment (tokens per loop; each step reads "
                           "only the filled cache slots)")
  parser.add_argument("--ar-repeats", type=int, default=1,
                      help="official: timed sampling rounds (each a full generation per side)")
  parser.add_argument("--out", default=None, help="append the table to this markdown file")
  args = parser.parse_args(argv)
  if args.suite is None:
    args.suite = "official" if args.compare_official else "quantizers"
  if args.repeats is None:
    # Official rounds are whole batches of 256px images through both libraries (seconds each).
    args.repeats = 2 if args.suite == "official" else 10
  if args.suite in ("tokenizers", "official") and args.batch is None:
    args.batch = 8
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
