"""Tokenizes a dataset into the token-dataset format that generator training reads.

  python tools/pretokenize.py --config configs/titok.py:tiny --checkpoint runs/titok --out runs/titok_tokens
  python tools/pretokenize.py --checkpoint runs/titok --source folder --folder imgs/ --out runs/tok
  python tools/pretokenize.py --checkpoint runs/titok --source tfds --tfds_name imagenet2012 --out runs/tok

Sources (--source):
  photos  the bundled photographs through the training data code (`jaxtok.data.pipeline.Pipeline`
          over `jaxtok.data.photos.PhotoSource`: Inception-style random crops of the training part
          of each photo, --num_examples of them); label = the photo's index;
  folder  every image under --folder, fitted like tools/tokenize_images.py (--fit); label = index of the
          sorted class subfolder (`folder/<class>/x.png`), -1 for files directly in --folder;
  tfds    a prepared tensorflow-datasets dataset (--tfds_name, --split, --data_dir) read without
          TensorFlow, short side resized and centre-cropped; label = the record's `label`.
Writes a directory (`jaxtok.data.tokens.write_token_dataset`): tokens.npy (int32 [N, K'], int32
[N, K', Q] for residual / unpacked-bit tokens, or float32 [N, K', D]), labels.npy (int32 [N]),
codebook.npy (float32 [Q, C, D], RVQ tokenizers only: the code vectors ResGen needs) and meta.json,
which records the tokenizer (its model config, the checkpoint path and weights) so tools/sample.py
can decode what a generator trained on it makes. A GPSToken run also writes layouts.npy (float32
[N, S, 5]: each image's initial Gaussians, the layout bank of `generators.gpstoken_gen`) and the
residual tokens' statistics (meta.json "gpstoken_stats").

A text-aware tokenizer's run (TA-TiTok, TexTok: its training config has a `text` section) reads
captions (TexTok's encoder reads them): --source photos (each crop carries its photo's caption,
`data.photo_captions`), folder (a `captions.jsonl` sidecar in --folder, one line {"file": relative
path, "caption": text} per image), tfds (the record feature --caption_key, default the run's
data.caption_key; "/" nests, a list gives its first caption: `data.caption_sources`). The dataset
then also holds the captions (`data.tokens`: captions.json with the run's `text` config,
caption_ids.npy (each image's row of the distinct captions), and for a CLIP text section
caption_features.npz: every caption's and the empty caption's CLIP features), which tools/train_generator.py turns into a
text-conditioned generator's labels (MaskGen) and tools/sample.py --prompt reuses (the same tower):

  python tools/pretokenize.py --checkpoint runs/tatitok --out runs/tatitok_tokens --num_examples 256

--captions stores the same caption files (texts and rows, no features) for any other tokenizer, for
generators that encode captions themselves (Instella-T2I with its OLMo tower, `generators.instella_t2i`):

  python tools/pretokenize.py --checkpoint runs/instella_bae --out runs/bae_bits --captions
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from jaxtok.data import image_sets  # noqa: E402
from jaxtok.eval import cli  # noqa: E402
SOURCES = ("photos", "folder", "tfds")

FLAGS = flags.FlagValues()
cli.define_tokenizer_flags(FLAGS)
cli.define_tfds_flags(FLAGS, split="train")
flags.DEFINE_string("out", None, "output token-dataset directory", flag_values=FLAGS)
flags.DEFINE_enum("source", "photos", list(SOURCES), "where the images come from", flag_values=FLAGS)
flags.DEFINE_string("folder", None, "image folder (--source folder)", flag_values=FLAGS)
flags.DEFINE_integer("num_examples", None, "examples to tokenize (photos: crops, default 1024; "
                     "folder/tfds: default all)", flag_values=FLAGS)
flags.DEFINE_integer("num_tokens", None, "tokens kept per image (default: all K)", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "photos: crop seed", flag_values=FLAGS)
flags.DEFINE_bool("captions", False, "also store the images' captions (as for a text-aware "
                  "tokenizer, without text features) for any tokenizer: the datasets of generators "
                  "that encode captions themselves (Instella-T2I's, with its OLMo tower)",
                  flag_values=FLAGS)
flags.DEFINE_string("caption_key", None, "tfds: the caption feature of a text-aware tokenizer "
                    "(e.g. captions/text; default the run's data.caption_key)", flag_values=FLAGS)


def caption_setup(info: dict, captions: list[str] | None = None) -> dict | None:
  """For a text-aware tokenizer run: {"config": its `text` section (plain dict), "captions": [P]
  (`captions`, default the bundled photographs'), "inputs": the model's caption tables {name: [P,
  ...]}, "features": the text encoder's outputs {name: [P + 1, ...]} with the empty caption last
  ({} when the model has none)}; None otherwise."""
  from jaxtok.data import photo_captions  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  name = info["model_config"].get("name")
  module = photo_captions.text_module(name)
  if module is None:
    return None
  run = _run_config()
  text_cfg = run.get("text") if run is not None and hasattr(run, "get") else None
  if text_cfg is None:
    raise ValueError(f"{name!r} needs its training config's `text` section (how captions become its "
                     f"inputs): pass --config (e.g. configs/{name}.py:tiny) or a training checkpoint "
                     "that stores its config")
  text_cfg = ml_collections.ConfigDict(text_cfg.to_dict() if hasattr(text_cfg, "to_dict")
                                       else dict(text_cfg))
  if captions is None:
    _, captions = photo_captions.captioned_photos()
  config = ml_collections.ConfigDict({"model": info["model_config"], "text": text_cfg})
  features = {}
  if hasattr(module, "caption_features"):
    features = module.caption_features(text_cfg, list(captions) + [""])
  return {"config": text_cfg.to_dict(), "captions": captions,
          "inputs": photo_captions.caption_tables(config, captions),
          "features": {k: np.asarray(v, np.float32) for k, v in features.items()}}


def _run_config():
  from jaxtok.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  return FLAGS.config if FLAGS.config is not None else ckpt_lib.read_config(FLAGS.checkpoint)


def image_captions(meta: dict, labels: np.ndarray) -> tuple[list[str] | None, np.ndarray]:
  """(distinct captions [P] (None: the bundled photographs'), each image's caption row int32 [N])
  for --source (module docstring)."""
  from jaxtok.data import caption_sources  # pylint: disable=g-import-not-at-top
  if FLAGS.source == "photos":
    return None, labels
  if FLAGS.source == "folder":
    return caption_sources.caption_table(caption_sources.folder_captions(FLAGS.folder,
                                                                         meta["names"]))
  run = _run_config()
  data = run.get("data") if run is not None and hasattr(run, "get") else None
  key = FLAGS.caption_key or (data.get("caption_key") if hasattr(data, "get") else None)
  if not key:
    raise ValueError("--source tfds with captions needs --caption_key (the caption "
                     "feature, e.g. captions/text) or a run config with data.caption_key")
  return caption_sources.caption_table(caption_sources.tfds_captions(
      FLAGS.tfds_name, FLAGS.split, FLAGS.data_dir, len(labels), key))


def captioned_encode_fn(tokenizer, num_tokens):
  """jitted fn(params, images, text) -> tokens of a text-aware tokenizer (`encode_captioned`)."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  graphdef = tokenizer.graphdef
  return jax.jit(lambda p, x, t: nnx.merge(graphdef, p).encode_captioned(
      x, t, num_tokens=num_tokens).tokens)


def main(argv) -> str:
  cli.parse(FLAGS, argv, __doc__)
  from jaxtok.data import photo_captions  # pylint: disable=g-import-not-at-top
  from jaxtok.data import tokens as token_data  # pylint: disable=g-import-not-at-top
  from jaxtok.eval import checkpoints  # pylint: disable=g-import-not-at-top
  if not FLAGS.out:
    raise ValueError("--out is required: the token-dataset directory to write")
  if FLAGS.num_examples is not None and FLAGS.num_examples < 1:
    raise ValueError(f"--num_examples must be >= 1, got {FLAGS.num_examples}")
  tokenizer, params, info = checkpoints.load_tokenizer(FLAGS.config, FLAGS.checkpoint,
                                                       use_ema=FLAGS.use_ema)
  num_tokens = cli.check_num_tokens(tokenizer, FLAGS.num_tokens)
  size = tokenizer.image_size
  if FLAGS.source == "photos":
    images, labels, meta = image_sets.photo_crops(size, FLAGS.num_examples or 1024, FLAGS.seed,
                                                  FLAGS.batch_size)
  elif FLAGS.source == "folder":
    images, labels, meta = image_sets.folder_images(FLAGS.folder, size, FLAGS.num_examples, FLAGS.fit)
  else:
    if not FLAGS.tfds_name:
      raise ValueError("--source tfds needs --tfds_name (e.g. cifar10), got none")
    images, labels, meta = image_sets.tfds_images(FLAGS.tfds_name, FLAGS.split, FLAGS.data_dir, size,
                                                  FLAGS.num_examples)
  if len(images) == 0:
    raise ValueError(f"--source {FLAGS.source}: expected at least one image, found 0")
  text = caption_ids = None
  plain_captions = None
  if photo_captions.text_module(info["model_config"].get("name")) is not None:
    texts, caption_ids = image_captions(meta, labels)
    text = caption_setup(info, texts)
  elif FLAGS.captions:  # the texts only: no text-aware tokenizer, no text encoder here
    texts, caption_ids = image_captions(meta, labels)
    plain_captions = {"ids": caption_ids, "texts": texts or photo_captions.captioned_photos()[1],
                      "text": None, "features": {}}
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  bar = tqdm(total=len(images), desc="tokenize", dynamic_ncols=True)

  def encode(x):
    bar.update(len(x))
    return tokenizer.encode(params, jnp.asarray(x), num_tokens=num_tokens).tokens

  if text is None:
    tokens = cli.batched(encode, images, FLAGS.batch_size)
  else:
    encode_text = captioned_encode_fn(tokenizer, num_tokens)
    rows = np.arange(len(images))

    def encode(r):  # noqa: F811  (text-aware: the crops' caption inputs too)
      bar.update(len(r))
      return encode_text(params, jnp.asarray(images[r]),
                         {k: jnp.asarray(v[caption_ids[r]]) for k, v in text["inputs"].items()})

    tokens = cli.batched(encode, rows, FLAGS.batch_size)
  bar.close()
  meta.update(codebook_size=tokenizer.vocab_size, image_size=int(size),
              tokenizer={"config": info["model_config"], "checkpoint": info["path"],
                         "weights": info["weights"], "step": info["step"],
                         "num_tokens": int(tokens.shape[1])})
  arrays = {}
  if getattr(tokenizer.model(params), "quantizer", None) == "rvq":
    # The code vectors of every level, for generators that work in code space (ResGen).
    arrays["codebook"] = np.asarray(checkpoints.codebook_vectors(tokenizer, params), np.float32)
  if info["model_config"].get("name") == "gpstoken":  # the generator's initial layouts + statistics
    from jaxtok.generators import gpstoken_gen  # pylint: disable=g-import-not-at-top
    extra_arrays, extra_meta = gpstoken_gen.dataset_extras(tokenizer.model(params), images, tokens,
                                                           FLAGS.batch_size)
    arrays.update(extra_arrays)
    meta.update(extra_meta)
  captions = plain_captions
  if text is not None:
    meta["text"] = text["config"]  # copied to the generator's data_meta.json: tools/sample.py --prompt
    captions = {"ids": caption_ids, "texts": text["captions"], "text": text["config"],
                "features": text["features"]}
  token_data.write_token_dataset(FLAGS.out, tokens, labels, meta, arrays=arrays, captions=captions)
  print(f"wrote {FLAGS.out}: tokens {tokens.dtype} {tokens.shape}, labels in "
        f"[{labels.min()}, {labels.max()}]", flush=True)
  return FLAGS.out


if __name__ == "__main__":
  main(sys.argv)
