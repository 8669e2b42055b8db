r"""Samples tokens from a trained generator and decodes them to images with its tokenizer.

  python tools/sample.py --config configs/maskgit_titok.py:tiny --workdir runs/maskgit \
      --config.model.codebook_size=64 --num_samples 16 --cfg_scale 2.0 --out runs/maskgit/samples

The sampler follows config.model.name (`jaxtok.eval.generate`): gpt -> autoregressive with the
KV cache (--num_tokens: generate only a prefix of ordered tokens), rar -> the same in raster order
(--cfg_schedule power-cosine --cfg_power P, the release's guidance), token_shuffle -> the same over
s x s windows (one step per window), nar -> next-neighbour decoding (one step per diagonal), maskgit -> MaskGIT parallel
decoding (--steps, --schedule, --choice_temperature; --mode titok --preset titok_b64 for the released
TiTok / One-D-Piece procedure, where --cfg_scale is its guidance scale), mar -> MAR random order with the flow head
(--steps iterations, --head_steps / --head_steps_lower DiSA annealing). Defaults come from the
config's `sampling` block; --temperature, --top_k, --top_p, --cfg_scale, --cfg_schedule override
them. Guidance needs a class-conditional generator (num_classes > 0).

--workdir may also be a converted released generator (tools/convert.py --model maskgit or rar:
params/ + config.json); --config is then optional and only its `sampling` block is read (e.g.
configs/rar.py:size=B for RAR-B's released settings), and --tokenizer_checkpoint is required (a
converted tokenizer directory works):

  python tools/sample.py --workdir converted/titok_b64_maskgit --tokenizer_checkpoint converted/titok_b64 \
      --mode titok --preset titok_b64 --num_samples 16

The tokenizer is the one the training data were made with (`<workdir>/data_meta.json`, written by
tools/train_generator.py from the dataset's meta.json), unless --tokenizer_checkpoint (and
--tokenizer_config) say otherwise.

Text-to-image (MaskGen, `jaxtok.generators.maskgen`; a converted release, tools/convert.py --model
maskgen): --prompt "a photo of an astronaut" (repeatable) with the user's CLIP text-tower weights
(--clip_weights) and BPE merges file (--bpe). A run of tools/train_generator.py on a captioned
token dataset (tools/pretokenize.py on a TA-TiTok run) needs neither: the dataset's meta names the
text tower its captions were encoded with (the user's files, or the tiny configs' random tower),
and the prompts go through the same one. Otherwise, without them it refuses. A TA-TiTok tokenizer
decodes with the prompts' CLIP features:

  python tools/sample.py --workdir converted/maskgen_vq_l --tokenizer_checkpoint converted/tatitok_bl128_vq \
      --prompt "a photo of an astronaut" --clip_weights open_clip_vit_l14_336.bin \
      --bpe bpe_simple_vocab_16e6.txt.gz --num_samples 4

GPSToken's generator (configs/gpstoken_gen.py) draws each sample's initial layout from the layout
bank of the token dataset it trained on (layouts.npy by class, `gpstoken_gen.LayoutBank`) and runs
the release's SDE (--steps, default 250; --cfg_scale on t in [0.2, 1]); a converted release
(tools/convert.py --model gpstoken_gen --initg initg.pickle) draws them from its own bank.

A D-AR tokenizer (configs/gpt_dar.py) also streams: --previews writes the image after each group
of tokens (`<out>/previews/<i>.png`, coarse to fine).

Writes `<out>/tokens.npz` (tokens, labels, options),
`<out>/images/<i>.png` (one per sample; a folder tools/evaluate.py --samples reads for gFID) and
`<out>/grid.png`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from jaxtok.eval import cli  # noqa: E402
from jaxtok.eval import images as img_lib  # noqa: E402

log = logging.getLogger("sample")

FLAGS = flags.FlagValues()
cli.define_config(FLAGS, "config", "generator config file[:arg] (as trained)")
flags.DEFINE_string("workdir", None, "the generator's run directory, or a converted generator "
                    "(tools/convert.py --out)", flag_values=FLAGS)
flags.DEFINE_string("out", None, "output folder (default <workdir>/samples)", flag_values=FLAGS)
flags.DEFINE_string("tokenizer_checkpoint", None, "tokenizer weights (default: from "
                    "<workdir>/data_meta.json)", flag_values=FLAGS)
cli.define_config(FLAGS, "tokenizer_config", "tokenizer config file[:arg] (default: the one "
                  "recorded with the data)")
flags.DEFINE_integer("num_samples", 16, "images to generate", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 16, "samples per jitted call", flag_values=FLAGS)
flags.DEFINE_string("labels", None, "comma-separated class ids, cycled (-1 = unconditional); default: "
                    "random classes for a class-conditional generator, else unconditional",
                    flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "sampling seed", flag_values=FLAGS)
flags.DEFINE_float("temperature", None, "sampling temperature", flag_values=FLAGS)
flags.DEFINE_integer("top_k", None, "keep the k most likely tokens (0 = off)", flag_values=FLAGS)
flags.DEFINE_float("top_p", None, "nucleus filter (1 = off)", flag_values=FLAGS)
flags.DEFINE_float("cfg_scale", None, "classifier-free guidance scale (1 = off)", flag_values=FLAGS)
flags.DEFINE_string("cfg_schedule", None, "guidance scale schedule (jaxtok.samplers.guidance)",
                    flag_values=FLAGS)
flags.DEFINE_float("cfg_power", None, "power of the power-cosine guidance schedule (RAR)",
                   flag_values=FLAGS)
flags.DEFINE_integer("steps", None, "MaskGIT steps / MAR iterations", flag_values=FLAGS)
flags.DEFINE_string("schedule", None, "MaskGIT mask schedule (cosine, arccos, linear, ...)",
                    flag_values=FLAGS)
flags.DEFINE_float("choice_temperature", None, "MaskGIT re-masking temperature", flag_values=FLAGS)
flags.DEFINE_enum("mode", None, ["maskgit", "titok"], "MaskGIT procedure: maskgit (google-research) "
                  "or titok (the released TiTok / One-D-Piece generators'; default: the config's)",
                  flag_values=FLAGS)
flags.DEFINE_string("preset", None, "mode titok: a released generator's sampling settings "
                    "(jaxtok.samplers.maskgit_released.PRESETS, e.g. titok_b64)", flag_values=FLAGS)
flags.DEFINE_integer("head_steps", None, "MAR: flow-head steps (first iteration)", flag_values=FLAGS)
flags.DEFINE_integer("head_steps_lower", None, "MAR: flow-head steps at the last iteration (DiSA)",
                     flag_values=FLAGS)
flags.DEFINE_integer("num_tokens", None, "GPT: generate only this many leading tokens",
                     flag_values=FLAGS)
flags.DEFINE_integer("segment", None, "GPT / RAR: sample in segments of this many tokens, each "
                     "step attending only to the filled cache slots (same tokens, faster at long "
                     "sequences; one compiled step per segment)", flag_values=FLAGS)
flags.DEFINE_bool("use_ema", True, "use EMA weights when kept", flag_values=FLAGS)
flags.DEFINE_bool("previews", False, "D-AR tokenizers: also write each sample's streaming previews, "
                  "the image decoded after each group of tokens (<out>/previews/<i>.png, groups "
                  "left to right; the last is the sample)", flag_values=FLAGS)
flags.DEFINE_multi_string("prompt", None, "text-to-image generators (maskgen): the caption(s), "
                          "cycled over --num_samples; needs --clip_weights and --bpe",
                          flag_values=FLAGS)
flags.DEFINE_string("clip_weights", None, "--prompt: the CLIP text tower's official weights "
                    "(OpenAI ViT-L/14-336 for the releases; open_clip or HF layout)",
                    flag_values=FLAGS)
flags.DEFINE_string("bpe", None, "--prompt: CLIP's BPE merges file (bpe_simple_vocab_16e6.txt.gz)",
                    flag_values=FLAGS)
flags.DEFINE_string("olmo_checkpoint", None, "--prompt with Instella-T2I (instella_diff / instella_ar): "
                    "the AMD-OLMo-1B text tower (tools/convert.py --model olmo output, or the HF "
                    "folder); default the run's config.model.text", flag_values=FLAGS)
flags.DEFINE_string("olmo_tokenizer", None, "--prompt with Instella-T2I: the tower's tokenizer.json",
                    flag_values=FLAGS)


def text_generators() -> set[str]:
  """Generator names that take --prompt: eval.generate's text samplers and Instella-T2I's."""
  from jaxtok.eval import generate  # pylint: disable=g-import-not-at-top
  from jaxtok.generators import instella_t2i  # pylint: disable=g-import-not-at-top
  return set(generate.TEXT_SAMPLERS) | set(instella_t2i.NETWORKS)


def sample_instella(gcfg, graphdef, params, opts, key) -> tuple[list[str], np.ndarray]:
  """(prompts [N], bits int32 [N, K, n]) for --prompt with Instella-T2I's generators
  (`generators.instella_t2i.sample_prompts`); the OLMo tower from --olmo_checkpoint /
  --olmo_tokenizer, else the run's config.model.text."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxtok.generators import instella_t2i  # pylint: disable=g-import-not-at-top
  if not FLAGS.prompt:
    raise ValueError(f"--prompt is required: {gcfg.name} generates images from text")
  text = gcfg.get("text") or {}
  if FLAGS.olmo_checkpoint or FLAGS.olmo_tokenizer:
    text = {"olmo_checkpoint": FLAGS.olmo_checkpoint, "tokenizer_json": FLAGS.olmo_tokenizer}
  encoder = instella_t2i.text_encoder({"name": gcfg.name, "text": text})
  model = nnx.merge(graphdef, params)
  prompts = [FLAGS.prompt[i % len(FLAGS.prompt)] for i in range(FLAGS.num_samples)]
  counter = iter(range(1 << 30))
  bits = cli.batched(lambda rows: instella_t2i.sample_prompts(
      model, gcfg, jax.random.fold_in(key, next(counter)), [prompts[int(r)] for r in rows], opts,
      encoder), np.arange(len(prompts)), FLAGS.batch_size)
  return prompts, bits


def sample_labels(spec: str | None, n: int, num_classes: int, seed: int) -> np.ndarray:
  """int32 [n]: the --labels list cycled, or random classes / -1 (see the flag)."""
  if spec:
    try:
      values = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
      raise ValueError(f"--labels must be comma-separated ints, got {spec!r}") from None
    bad = [v for v in values if v < -1 or (num_classes > 0 and v >= num_classes)
           or (num_classes == 0 and v != -1)]
    if bad or not values:
      hi = f"[-1, {num_classes - 1}]" if num_classes else "-1 only (unconditional generator)"
      raise ValueError(f"--labels must lie in {hi}, got {values}")
    return np.resize(np.asarray(values, np.int32), n)
  if num_classes > 0:
    return np.random.default_rng(seed).integers(0, num_classes, n).astype(np.int32)
  return np.full((n,), -1, np.int32)


def data_meta(config, workdir: str) -> dict:
  """The token dataset's meta.json the generator was trained on ({} when it cannot be found)."""
  path = os.path.join(workdir, "data_meta.json")
  if not os.path.exists(path) and config.data.get("path"):
    path = os.path.join(config.data.path, "meta.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {}


def is_converted(workdir: str | None) -> bool:
  """Whether `workdir` is a tools/convert.py output (params/ + config.json) rather than a run."""
  return bool(workdir) and os.path.isdir(os.path.join(workdir, "params")) and os.path.isfile(
      os.path.join(workdir, "config.json"))


def load_generator(config, workdir: str, use_ema: bool):
  """(model config, graphdef, params): a training run's newest checkpoint, or a converted release."""
  if is_converted(workdir):
    from jaxtok import convert  # pylint: disable=g-import-not-at-top
    import ml_collections  # pylint: disable=g-import-not-at-top
    gcfg, graphdef, params = convert.load_converted_generator(workdir)
    return ml_collections.ConfigDict(gcfg), graphdef, params
  from jaxtok.train import generator  # pylint: disable=g-import-not-at-top
  gcfg = generator.model_config(config)
  try:
    graphdef, params = generator.load_params(config, workdir, use_ema=use_ema)
  except FileNotFoundError as err:
    raise FileNotFoundError(f"--workdir: {err}") from None
  return gcfg, graphdef, params


def sample_from_text(gcfg, graphdef, params, opts, tokenizer, tok_params, tok_loaded, key,
                     meta=None):
  """(prompts [N], tokens int32 [N, K], images uint8 [N, S, S, 3]) for --prompt with a text-to-image
  generator: the captions' CLIP features (the user's --clip_weights and --bpe, else the text tower
  of the token dataset the run trained on: data_meta.json's "text") condition it, the empty
  caption's give the guidance's unconditional branch, and a TA-TiTok decoder reads the captions'
  features too."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxtok.eval import generate  # pylint: disable=g-import-not-at-top
  from jaxtok.text import encoder as encoder_lib  # pylint: disable=g-import-not-at-top
  if not FLAGS.prompt:
    raise ValueError(f"--prompt is required: {gcfg.name} generates images from text")
  if gcfg.name not in generate.TEXT_SAMPLERS:
    raise ValueError(f"--prompt needs a text-to-image generator ({sorted(generate.TEXT_SAMPLERS)}), "
                     f"got {gcfg.name!r}")
  from jaxtok.train import generator  # pylint: disable=g-import-not-at-top
  text_cfg = (meta or {}).get("text")
  if text_cfg and not (FLAGS.clip_weights or FLAGS.bpe):  # the tower the training captions used
    text = encoder_lib.from_config(text_cfg)
  else:
    text = encoder_lib.TextEncoder.from_files(FLAGS.clip_weights, FLAGS.bpe)
  text_condition = generator.generator_module(gcfg.name).text_condition
  prompts = [FLAGS.prompt[i % len(FLAGS.prompt)] for i in range(FLAGS.num_samples)]
  feats, null = text(prompts), text([""])
  sampler = generate.make_text_sampler(gcfg.name, graphdef, params, opts)
  null_cond = text_condition(null)
  counter = iter(range(1 << 30))

  def run(rows):
    cond = text_condition({k: v[rows] for k, v in feats.items()})
    return sampler(jax.random.fold_in(key, next(counter)), cond, null_cond)

  rows = np.arange(len(prompts))
  tokens = cli.batched(run, rows, FLAGS.batch_size)
  if tok_loaded["model_config"].get("name") == "tatitok":
    from jaxtok.tokenizers import tatitok  # pylint: disable=g-import-not-at-top
    decode = tatitok.decode_fn(tokenizer)
    images = cli.batched(lambda r: img_lib.to_uint8(decode(tok_params, jnp.asarray(tokens[r]),
                                                           jnp.asarray(feats["tokens"][r]))),
                         rows, FLAGS.batch_size)
  else:
    from jaxtok.eval import tokenize_cli  # pylint: disable=g-import-not-at-top
    images = tokenize_cli.decode_tokens(tokenizer, tok_params, tokens,
                                        batch_size=FLAGS.batch_size, seed=FLAGS.seed)
  return prompts, tokens, images


def dar_previews(tokenizer, params, tokens: np.ndarray) -> np.ndarray:
  """uint8 [N, G', S, S, 3]: --previews of tokens [N, K] (`tokenizers.dar.preview_fn`), batch i
  with the key `tokenize_cli.decode_tokens` gives it, so each last preview is the decoded sample."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxtok.tokenizers import dar  # pylint: disable=g-import-not-at-top
  fn, key, counter = dar.preview_fn(tokenizer), jax.random.key(FLAGS.seed), iter(range(1 << 30))
  return cli.batched(lambda chunk: img_lib.to_uint8(np.moveaxis(np.asarray(fn(
      params, jax.numpy.asarray(chunk), jax.random.fold_in(key, next(counter)))), 0, 1)),
      tokens, FLAGS.batch_size)


def main(argv) -> dict:
  cli.parse(FLAGS, argv, __doc__)
  config = FLAGS.config
  converted = is_converted(FLAGS.workdir)
  if config is None and not converted:
    raise ValueError("--config is required: the generator's config file (as trained)")
  run_dir = bool(FLAGS.workdir) and os.path.isdir(os.path.join(FLAGS.workdir, "checkpoints"))
  if not converted and not run_dir:
    raise FileNotFoundError(f"--workdir: expected a generator run directory with checkpoints/ "
                            f"(tools/train_generator.py) or a converted generator (tools/convert.py "
                            f"--out: params/ and config.json), got {FLAGS.workdir!r}")
  if FLAGS.prompt and config is not None and config.get("model") is not None:
    if config.model.get("name") not in text_generators():  # before any weights are read
      raise ValueError(f"--prompt needs a text-to-image generator ({sorted(text_generators())}), "
                       f"got config.model.name {config.model.get('name')!r} (class-conditional: "
                       "use --labels)")
  if FLAGS.num_samples < 1 or FLAGS.batch_size < 1:
    raise ValueError(f"--num_samples and --batch_size must be >= 1, got {FLAGS.num_samples} and "
                     f"{FLAGS.batch_size}")
  import jax  # pylint: disable=g-import-not-at-top
  from jaxtok.eval import checkpoints, generate  # pylint: disable=g-import-not-at-top

  gcfg, graphdef, params = load_generator(config, FLAGS.workdir, FLAGS.use_ema)
  num_classes = int(gcfg.get("num_classes", 0))
  labels = sample_labels(FLAGS.labels, FLAGS.num_samples, num_classes, FLAGS.seed)
  # A converted GPSToken generator's layout bank is its own directory (tools/convert.py --initg).
  meta = {"path": FLAGS.workdir} if converted else data_meta(config, FLAGS.workdir)
  tok_info = meta.get("tokenizer", {})
  tok_ckpt = FLAGS.tokenizer_checkpoint or tok_info.get("checkpoint")
  if not tok_ckpt:
    raise ValueError("--tokenizer_checkpoint is required: the generator's workdir records no tokenizer "
                     "(no data_meta.json from tools/train_generator.py)")
  tok_cfg = FLAGS.tokenizer_config
  if tok_cfg is None and not FLAGS.tokenizer_checkpoint:
    tok_cfg = tok_info.get("config")
  tokenizer, tok_params, tok_loaded = checkpoints.load_tokenizer(tok_cfg, tok_ckpt, flag="--tokenizer_checkpoint",
                                                        config_flag="--tokenizer_config")
  if FLAGS.previews and tok_loaded["model_config"].get("name") != "dar":
    raise ValueError(f"--previews needs a D-AR tokenizer (its decoder streams one image per group "
                     f"of tokens), got {tok_loaded['model_config'].get('name')!r}")
  seq_len = int(gcfg.seq_len)
  if tokenizer.max_tokens is not None and seq_len > tokenizer.max_tokens:
    raise ValueError(f"the generator makes {seq_len} tokens, the tokenizer decodes at most "
                     f"{tokenizer.max_tokens} (--tokenizer_checkpoint / --config mismatch)")
  opts = generate.options_from_config(
      config.get("sampling") if config is not None else None, temperature=FLAGS.temperature,
      top_k=FLAGS.top_k, top_p=FLAGS.top_p,
      cfg_scale=FLAGS.cfg_scale, cfg_schedule=FLAGS.cfg_schedule, cfg_power=FLAGS.cfg_power,
      steps=FLAGS.steps,
      schedule=FLAGS.schedule, choice_temperature=FLAGS.choice_temperature, mode=FLAGS.mode,
      preset=FLAGS.preset,
      head_steps=FLAGS.head_steps, head_steps_lower=FLAGS.head_steps_lower,
      num_tokens=FLAGS.num_tokens, segment=FLAGS.segment)
  if num_classes == 0 and opts.cfg_scale != 1.0 and gcfg.name not in text_generators():
    log.warning("cfg_scale %s ignored: the generator is unconditional (num_classes = 0)", opts.cfg_scale)
  key = jax.random.key(FLAGS.seed)
  counter = iter(range(1 << 30))
  prompts = None
  if gcfg.name in text_generators() - set(generate.TEXT_SAMPLERS):  # Instella-T2I
    prompts, tokens = sample_instella(gcfg, graphdef, params, opts, key)
    labels = np.full((len(tokens),), -1, np.int32)
    from jaxtok.eval import tokenize_cli  # pylint: disable=g-import-not-at-top
    decoded = tokenize_cli.decode_tokens(tokenizer, tok_params, tokens,
                                         batch_size=FLAGS.batch_size, seed=FLAGS.seed)
  elif FLAGS.prompt or gcfg.name in generate.TEXT_SAMPLERS:
    prompts, tokens, decoded = sample_from_text(gcfg, graphdef, params, opts, tokenizer,
                                                tok_params, tok_loaded, key, meta)
    labels = np.full((len(tokens),), -1, np.int32)
  else:
    sampler = generate.make_sampler(gcfg.name, graphdef, params, opts)
    side = generate.sampling_labels(gcfg, meta)  # GPSToken: + layouts from the data's bank
    tokens = cli.batched(lambda lab: sampler(jax.random.fold_in(key, next(counter)), side(lab)),
                         labels, FLAGS.batch_size)
    from jaxtok.eval import tokenize_cli  # pylint: disable=g-import-not-at-top
    decoded = tokenize_cli.decode_tokens(tokenizer, tok_params, tokens,
                                         batch_size=FLAGS.batch_size, seed=FLAGS.seed)
  out = FLAGS.out or os.path.join(FLAGS.workdir, "samples")
  os.makedirs(out, exist_ok=True)
  np.savez(os.path.join(out, "tokens.npz"), tokens=tokens, labels=labels,
           names=np.asarray([f"{i:05d}" for i in range(len(tokens))]),
           options=json.dumps(dataclasses.asdict(opts)), generator=str(gcfg.name),
           # The tokenizer's config, so tools/tokenize_images.py --tokens refuses to decode with another.
           config=json.dumps(tok_loaded["model_config"]), checkpoint=str(tok_ckpt),
           prompts=np.asarray(prompts if prompts is not None else [], dtype=str))
  for i, image in enumerate(decoded):
    img_lib.save_png(os.path.join(out, "images", f"{i:05d}.png"), image)
  img_lib.save_png(os.path.join(out, "grid.png"), img_lib.grid(decoded),
                   scale=max(1, 64 // decoded.shape[1]))
  previews = dar_previews(tokenizer, tok_params, tokens) if FLAGS.previews else None
  for i, strip in enumerate(previews if previews is not None else []):
    img_lib.save_png(os.path.join(out, "previews", f"{i:05d}.png"),
                     img_lib.grid(strip, columns=len(strip)), scale=max(1, 64 // strip.shape[1]))
  print(f"{len(tokens)} samples ({gcfg.name}, tokens {tokens.shape}) -> {out}", flush=True)
  return {"tokens": tokens, "labels": labels, "images": decoded, "out": out, "prompts": prompts,
          "previews": previews}


if __name__ == "__main__":
  main(sys.argv)
