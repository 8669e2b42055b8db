"""jaxtok benchmarks: measured speed of the library's hot paths, written as markdown rows.

Usage:
  python tools/benchmark.py --suite quantizers [--compare-torch] [--out benchmarks/RESULTS.md]
  python tools/benchmark.py --suite tokenizers [--models titok_s128,titok_b64] [--batch 8]
  python tools/benchmark.py --suite train [--models main,titok_b64,flextok] [--batch 32]
  python tools/benchmark.py --suite samplers [--skip-ar] [--other-batch 2]
  python tools/benchmark.py --suite samplers --ar-only --ar-size 256x4 --ar-tokens 64 --ar-batch 4
      (GPT, Token-Shuffle s=2 and NAR at one size: tokens/s and model calls per image)
  python tools/benchmark.py --suite data [--batch 32] [--repeats 10]
  python tools/benchmark.py --suite semantic [--batch 8] [--repeats 5]   (TokenFlow, DualToken, TexTok, TiTok)
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
  """Official RAR generate() (KV cache, guidance by doubling the batch) against jaxtok's GPT under
  `samplers.autoregressive.sample` with the same guidance: both run 2B rows per step."""
  import torch
  from flax import nnx
  from omegaconf import OmegaConf
  from jaxtok.generators import gpt
  from jaxtok.samplers import autoregressive as ar

  b, n, depth, vocab = args.ar_batch, args.ar_tokens, args.rar_depth, 1024
  width, heads, classes = 768, 16, 1000
  # configs/training/generator/rar.yaml (RAR-B: 24 layers; --rar-depth sets the depth) and its
  # sampling settings: guidance 16.0 with the power-cosine schedule (power 2.75), temperature 1.0.
  cfg = OmegaConf.create({"model": {
      "vq_model": {"codebook_size": vocab},
      "generator": dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                        intermediate_size=4 * width, dropout=0.1, attn_drop=0.1,
                        class_label_dropout=0.1, image_seq_len=n, condition_num_classes=classes)}})
  stage("rar: building the official model")
  torch.manual_seed(0)
  theirs = rar_mod.RAR(cfg).eval()
  labels = np.arange(b) % classes
  t_labels = torch.from_numpy(labels)
  model = gpt.GPT(codebook_size=vocab, seq_len=n, num_classes=classes, width=width, depth=depth,
                  heads=heads, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)

  @jax.jit
  def sample(params, labels, rng):
    m = nnx.merge(graphdef, params)
    prompt = m.condition_ids(labels, b)[:, None]
    null = jnp.full_like(prompt, m.null_id)
    return ar.sample(rng, m.prefill, m.step, m.init_cache(2 * b), prompt, num_tokens=n,
                     uncond_prompt_tokens=null, cfg_scale=16.0, cfg_schedule="power-cosine",
                     cfg_power=2.75, temperature=1.0)

  j_labels = jnp.asarray(labels, jnp.int32)
  stage("rar: compiling the jaxtok sampler")
  compiled = sample.lower(params, j_labels, jax.random.key(0)).compile()

  def theirs_fn():
    with torch.no_grad():
      return theirs.generate(t_labels, guidance_scale=16.0, randomize_temperature=1.0,
                             guidance_scale_pow=2.75, kv_cache=True)

  # Warm-up of both (PyTorch's first calls create its kernels): a few steps of the official loop
  # (generate runs image_seq_len steps) and one full jaxtok call, which is cheap by comparison.
  theirs.image_seq_len = 4
  theirs_fn()
  theirs.image_seq_len = n
  jax.block_until_ready(compiled(params, j_labels, jax.random.key(1)))
  stage(f"rar: timing {args.ar_repeats} rounds")
  t = time_rounds({"ours": lambda: jax.block_until_ready(compiled(params, j_labels,
                                                                  jax.random.key(0))),
                   "theirs": theirs_fn}, args.ar_repeats, warmup=False)
  if args.breakdown:
    _profile_row(rows, f"AR sample {n} tokens, batch {b} (+{b} guidance rows)", sample, params,
                 j_labels, jax.random.key(0))
  per = b * n
  case = (f"AR sample {n} tokens, batch {b} (+{b} guidance rows), {depth} x {width}, {heads} heads, "
          f"vocab {vocab}")
  rows += _pair_rows(case, t["ours"], t["theirs"], per, unit="tokens/s")


# ---- semantic tokenizers: TokenFlow / DualToken beside a TiTok of similar size

# 64 px, 8 x 8 = 64 tokens each, transformer widths 192 (random weights: throughput only).
_SEM_SIGLIP = dict(width=192, depth=4, num_heads=3, mlp_hidden=768, patch_size=8, image_size=64)


def _semantic_configs() -> dict:
  """name -> model config of the semantic suite (the tiny configs scaled to 64 px and width 192)."""
  from jaxtok.configs import dualtoken, titok, tokenflow
  tf = tokenflow.get_config("tiny").model
  tf.update(image_size=64, siglip=dict(_SEM_SIGLIP), codebook_size=4096, semantic_dim=32, pixel_dim=8,
            ch=32, ch_mult=(1, 1, 2, 4), num_res_blocks=1, z_channels=64, num_groups=8,
            decoder_width=192, decoder_depth=2, decoder_heads=3)
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


SUITES = {"quantizers": quantizer_suite, "tokenizers": tokenizer_suite, "train": train_suite,
          "samplers": sampler_suite, "data": data_suite,
          "official": official_suite, "semantic": semantic_suite}


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
  # ImageNet's photos are mostly ~500x375; 2000x1500 is a phone photo, 8000x8000 the PNG.
  parser.add_argument("--data-sizes", default="500x375,2000x1500,8000x8000",
                      help="data: comma-separated WxH photo sizes resized to 256")
  parser.add_argument("--compare-official", default=None, metavar="PATH",
                      help="a bytedance/1d-tokenizer checkout: time its TiTok and RAR beside "
                           "jaxtok's (suite 'official', the default with this option; needs torch, "
                           "einops, omegaconf)")
  parser.add_argument("--breakdown", action="store_true",
                      help="official: also time the MaskGIT-VQGAN pixel decoder alone")
  parser.add_argument("--rar-depth", type=int, default=12, help="official: RAR/GPT layers")
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
