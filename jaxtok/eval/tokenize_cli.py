"""tools/tokenize_images.py: a folder of images -> tokens (.npz) -> decoded PNGs.

Encode (--input): every png/jpg/jpeg/webp/bmp file under --input (recursive, sorted) is fitted to
the model's size (--fit crop: short side resized then centre crop; stretch: both sides resized),
encoded to its first --num_tokens tokens (default all K) and written to `<output>/tokens.npz`:
  tokens       int32 [N, K'] (float32 [N, K', D] for continuous tokenizers)
  names        str [N] input paths relative to --input
  config       JSON of the tokenizer's model config
  num_tokens   K' ; checkpoint: the weights' path ; weights: "ema" or "params"
With --decode the tokens are decoded again to `<output>/decoded/<name>.png` and a grid of the
originals (top row of each pair) over their decodings, `<output>/decoded_grid.png`.

Decode only (--tokens FILE.npz, e.g. from this tool or tools/sample.py): decodes the file's tokens
to `<output>/decoded/`.
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np
from absl import flags

from jaxtok.eval import cli
from jaxtok.eval import images as img_lib

log = logging.getLogger(__name__)

FLAGS = flags.FlagValues()
cli.define_tokenizer_flags(FLAGS)
flags.DEFINE_string("input", None, "folder of images to encode", flag_values=FLAGS)
flags.DEFINE_string("tokens", None, "a tokens .npz to decode instead of encoding --input", flag_values=FLAGS)
flags.DEFINE_string("output", None, "output folder", flag_values=FLAGS)
flags.DEFINE_integer("num_tokens", None, "tokens kept per image (default: all K)", flag_values=FLAGS)
flags.DEFINE_bool("decode", False, "also decode the tokens to PNGs", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "rng seed for stochastic decoders (FlexTok's flow)", flag_values=FLAGS)
flags.DEFINE_integer("grid_images", 16, "images in the decoded grid", flag_values=FLAGS)


def decode_tokens(tokenizer, params, tokens: np.ndarray, *, batch_size: int, seed: int) -> np.ndarray:
  """uint8 [N, S, S, 3] decodings of tokens [N, K', ...] (batch i's rng: fold_in(key(seed), i))."""
  import jax  # pylint: disable=g-import-not-at-top
  key = jax.random.key(seed)
  counter = iter(range(1 << 30))

  def fn(chunk):
    return img_lib.to_uint8(tokenizer.decode(params, jax.numpy.asarray(chunk),
                                             rng=jax.random.fold_in(key, next(counter))))
  return cli.batched(fn, tokens, batch_size)


def encode_folder(tokenizer, params, folder: str, paths, *, num_tokens, batch_size: int, fit: str):
  """(tokens [N, K', ...], originals uint8 [N, S, S, 3]) of the images folder/paths."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  size = tokenizer.image_size
  images = img_lib.load_images(folder, paths, size, fit)
  tokens = cli.batched(lambda x: tokenizer.encode(params, jnp.asarray(x), num_tokens=num_tokens).tokens,
                       images, batch_size)
  return tokens, img_lib.to_uint8(images)


def write_decoded(output: str, names, decoded: np.ndarray, originals: np.ndarray | None,
                  grid_images: int) -> None:
  for name, image in zip(names, decoded):
    img_lib.save_png(os.path.join(output, "decoded", img_lib.output_name(str(name))), image)
  n = min(grid_images, len(decoded))
  if n:
    cols = min(n, 8)
    rows = []
    for i in range(0, n, cols):
      if originals is not None:
        rows.append(originals[i:i + cols])
      rows.append(decoded[i:i + cols])
    pad = [np.concatenate([r, np.full((cols - len(r),) + r.shape[1:], 255, np.uint8)]) for r in rows]
    img_lib.save_png(os.path.join(output, "decoded_grid.png"),
                     img_lib.grid(np.concatenate(pad), columns=cols),
                     scale=max(1, 64 // decoded.shape[1]))


def load_token_file(path: str, *, flag: str = "--tokens") -> dict:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{flag}: expected a tokens .npz written by tools/tokenize_images.py or "
                            f"tools/sample.py, {path!r} does not exist")
  with np.load(path, allow_pickle=False) as f:
    data = {k: f[k] for k in f.files}
  if "tokens" not in data:
    raise ValueError(f"{flag}: {path!r} has no 'tokens' array (found {sorted(data)})")
  return data


def check_same_model(data: dict, model_config: dict, path: str, *, flag: str = "--tokens") -> None:
  """Raises ValueError when a token file records a model config other than `model_config`.

  Token ids mean something only to the model that wrote them: decoding them with another one runs
  and returns plausible-looking wrong images. Files without a recorded config are not checked.
  """
  if "config" not in data:
    return
  stored = json.loads(str(data["config"]))
  current = json.loads(json.dumps(model_config, default=str))
  if stored == current:
    return
  diff = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
  shown = ", ".join(f"{k}: file {stored.get(k)!r} vs model {current.get(k)!r}" for k in diff[:6])
  more = f" (and {len(diff) - 6} more)" if len(diff) > 6 else ""
  written = f" (written with checkpoint {str(data['checkpoint'])!r})" if "checkpoint" in data else ""
  raise ValueError(f"{flag}: {path!r} holds tokens of another model{written}; its stored config "
                   f"differs from this tokenizer's in {shown}{more}. Decode it with the model it "
                   f"was written with (--config / --checkpoint)")


def main(argv) -> dict:
  cli.parse(FLAGS, argv, __doc__)
  from jaxtok.eval import checkpoints  # pylint: disable=g-import-not-at-top
  if not FLAGS.output:
    raise ValueError("--output is required: the folder for tokens.npz and decoded PNGs")
  if bool(FLAGS.input) == bool(FLAGS.tokens):
    raise ValueError(f"pass exactly one of --input (a folder to encode) and --tokens (a .npz to "
                     f"decode), got --input={FLAGS.input!r} and --tokens={FLAGS.tokens!r}")
  tokenizer, params, info = checkpoints.load_tokenizer(FLAGS.config, FLAGS.checkpoint,
                                                       use_ema=FLAGS.use_ema)
  from jaxtok.data import photo_captions  # pylint: disable=g-import-not-at-top
  photo_captions.refuse_captionless(info["model_config"], "tools/tokenize_images.py")
  os.makedirs(FLAGS.output, exist_ok=True)
  if FLAGS.tokens:
    data = load_token_file(FLAGS.tokens)
    check_same_model(data, info["model_config"], FLAGS.tokens)
    tokens = data["tokens"]
    k = tokenizer.max_tokens
    if tokens.ndim not in (2, 3) or (k is not None and not 1 <= tokens.shape[1] <= k):
      raise ValueError(f"--tokens: expected tokens [N, K'] with 1 <= K' <= {k} for this tokenizer, "
                       f"got shape {tokens.shape}")
    names = data.get("names", np.asarray([f"{i:05d}" for i in range(len(tokens))]))
    decoded = decode_tokens(tokenizer, params, tokens, batch_size=FLAGS.batch_size, seed=FLAGS.seed)
    write_decoded(FLAGS.output, names, decoded, None, FLAGS.grid_images)
    log.info("decoded %d images to %s", len(decoded), os.path.join(FLAGS.output, "decoded"))
    return {"decoded": decoded, "names": names}

  num_tokens = cli.check_num_tokens(tokenizer, FLAGS.num_tokens)
  paths = img_lib.list_images(FLAGS.input, flag="--input")
  tokens, originals = encode_folder(tokenizer, params, FLAGS.input, paths, num_tokens=num_tokens,
                                    batch_size=FLAGS.batch_size, fit=FLAGS.fit)
  tokens = tokens.astype(np.int32 if np.issubdtype(tokens.dtype, np.integer) else np.float32)
  out = os.path.join(FLAGS.output, "tokens.npz")
  np.savez(out, tokens=tokens, names=np.asarray(paths), config=json.dumps(info["model_config"]),
           num_tokens=np.int32(tokens.shape[1]), image_size=np.int32(tokenizer.image_size),
           checkpoint=info["path"], weights=info["weights"])
  log.info("wrote %s: tokens %s %s", out, tokens.dtype, tokens.shape)
  result = {"tokens": tokens, "names": paths}
  if FLAGS.decode:
    decoded = decode_tokens(tokenizer, params, tokens, batch_size=FLAGS.batch_size, seed=FLAGS.seed)
    write_decoded(FLAGS.output, paths, decoded, originals, FLAGS.grid_images)
    result["decoded"] = decoded
  print(f"tokens {tokens.shape} -> {out}", flush=True)
  return result
