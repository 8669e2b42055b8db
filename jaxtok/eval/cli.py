"""Command-line plumbing shared by the tools: per-tool flag registries and batched jitted calls.

Every tool keeps its flags in its own `absl.flags.FlagValues` (not the global registry), so several
tools can be imported into one process (the tests call `main(argv)` of each) without their flag
names colliding, and `main(argv)` parses argv afresh on every call (defaults restored first).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, Sequence

import numpy as np
from absl import flags


def repo_root_on_path(tool_file: str) -> None:
  """Puts the repository root (the tools' parent) on sys.path, so `configs.*` imports resolve."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(tool_file)))
  if root not in sys.path:
    sys.path.insert(0, root)


def define_config(flag_values: flags.FlagValues, name: str, help_string: str) -> None:
  """A config-file flag `--name=file.py[:arg]` whose fields `--name.a.b=value` are overridden by
  `parse` (ml_collections only honours overrides present in sys.argv when the flag is defined, so
  the tools apply them themselves: main(argv) then works from tests as from the shell)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file(name, None, help_string, flag_values=flag_values, lock_config=False,
                                  sys_argv=[name])


def _convert(text: str, old: Any, flag: str) -> Any:
  import ast  # pylint: disable=g-import-not-at-top
  try:
    if isinstance(old, bool):
      if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError(text)
      return text.lower() in ("true", "1")
    if isinstance(old, int):
      return int(text)
    if isinstance(old, float):
      return float(text)
    if isinstance(old, str):
      return text
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      if old is None:
        return text
      raise
    return tuple(value) if isinstance(old, tuple) and isinstance(value, list) else value
  except (ValueError, SyntaxError):
    raise ValueError(f"{flag}: expected a value of type {type(old).__name__} (like {old!r}), got "
                     f"{text!r}") from None


def apply_override(config: Any, path: str, text: str, flag: str) -> None:
  """Sets config.<path> (dotted, an existing field) from its command-line text."""
  *parents, leaf = path.split(".")
  node = config
  for part in parents:
    if not hasattr(node, "keys") or part not in node.keys():
      raise ValueError(f"{flag}: the config has no field {path!r}")
    node = node[part]
  if not hasattr(node, "keys") or leaf not in node.keys():
    raise ValueError(f"{flag}: the config has no field {path!r}")
  node[leaf] = _convert(text, node[leaf], flag)


def check_config_files(argv: Sequence[str], names: Sequence[str]) -> None:
  """SystemExit naming the flag and the path when `--<name>=FILE[:ARG]` (or `--<name> FILE`) names
  no file: ml_collections would otherwise fail later with "OSError: Failed loading config file
  config_config"."""
  argv = list(argv)
  for i, a in enumerate(argv[1:], 1):
    for name in names:
      if a == f"--{name}" and i + 1 < len(argv):
        value = argv[i + 1]
      elif a.startswith(f"--{name}="):
        value = a.split("=", 1)[1]
      else:
        continue
      path = value.split(":", 1)[0]
      if not os.path.isfile(path):
        raise SystemExit(f"{argv[0]}: --{name}: config file {path!r} does not exist (expected "
                         f"FILE.py[:ARG], e.g. configs/titok.py:tiny)")


def parse(flag_values: flags.FlagValues, argv: Sequence[str], doc: str | None = None) -> None:
  """Parses argv[1:] into `flag_values` from the defaults, then applies `--<config>.a.b=v` overrides
  to the loaded configs; `--help` prints the flags and exits."""
  argv = list(argv) if argv else ["tool"]
  if any(a in ("--help", "-h", "--helpshort", "--helpfull") for a in argv[1:]):
    print((doc or "").strip() + "\n\n" + flag_values.get_help())
    raise SystemExit(0)
  config_names = [n for n, f in flag_values._flags().items()  # pylint: disable=protected-access
                  if type(f).__name__ == "_ConfigFlag"]
  check_config_files(argv, config_names)
  rest, overrides = [argv[0]], []
  for a in argv[1:]:
    head = a[2:].split("=", 1)[0] if a.startswith("--") else ""
    name = head.split(".", 1)[0]
    if "." in head and name in config_names:
      if "=" not in a:
        raise SystemExit(f"{argv[0]}: {a} needs a value ({a}=...)")
      overrides.append((name, head.split(".", 1)[1], a.split("=", 1)[1], a.split("=", 1)[0]))
    else:
      rest.append(a)
  flag_values.unparse_flags()
  try:
    left = flag_values(rest)
  except flags.Error as err:
    raise SystemExit(f"{argv[0]}: {err}\nPass --help for the flags.") from None
  if len(left) > 1:
    raise SystemExit(f"{argv[0]}: unexpected positional arguments {left[1:]}")
  for name, path, text, flag in overrides:
    config = flag_values[name].value
    if config is None:
      raise ValueError(f"{flag} needs --{name}=<config file> to override")
    apply_override(config, path, text, flag)
  setup_logging()


def define_tokenizer_flags(flag_values: flags.FlagValues, *, fit: bool = True) -> None:
  """--checkpoint, --config, --use_ema, --batch_size (and --fit) of the tools that load a tokenizer."""
  from jaxtok.eval import images  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("checkpoint", None, "tokenizer weights: training workdir, checkpoint dir or "
                      "orbax parameter dir", flag_values=flag_values)
  define_config(flag_values, "config", "tokenizer config file[:arg] (optional for training "
                "checkpoints, which store theirs)")
  flags.DEFINE_bool("use_ema", True, "use the EMA weights of a training checkpoint",
                    flag_values=flag_values)
  flags.DEFINE_integer("batch_size", 32, "images per jitted call", flag_values=flag_values)
  if fit:
    flags.DEFINE_enum("fit", "crop", list(images.FITS), "how image files are fitted to the model "
                      "size (crop: short side + centre crop; stretch)", flag_values=flag_values)


def define_codec_flags(flag_values: flags.FlagValues, *, inputs: str, outputs: str) -> None:
  """--checkpoint, --prior, --prior_kind, --input, --output of tools/compress.py and decompress.py."""
  flags.DEFINE_string("checkpoint", None, "the tokenizer's training run directory",
                      flag_values=flag_values)
  flags.DEFINE_string("prior", None, "priors folder (tools/train_prior.py)", flag_values=flag_values)
  flags.DEFINE_enum("prior_kind", "causal", ["causal", "unigram", "unigram_pos", "uniform"],
                    "the prior that codes the tokens (uniform needs no --prior)",
                    flag_values=flag_values)
  flags.DEFINE_string("input", None, inputs, flag_values=flag_values)
  flags.DEFINE_string("output", None, outputs, flag_values=flag_values)


def define_tfds_flags(flag_values: flags.FlagValues, *, split: str) -> None:
  """--tfds_name, --split, --data_dir (a prepared tensorflow-datasets dataset, read without TF)."""
  flags.DEFINE_string("tfds_name", None, "tfds dataset name, e.g. cifar10", flag_values=flag_values)
  flags.DEFINE_string("split", split, "tfds split", flag_values=flag_values)
  flags.DEFINE_string("data_dir", None, "tfds data_dir (default ~/tensorflow_datasets)",
                      flag_values=flag_values)


def setup_logging() -> None:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  # orbax logs every checkpoint phase at INFO through absl; keep its warnings and errors only.
  logging.getLogger("absl").setLevel(logging.WARNING)


def batched(fn: Callable[[np.ndarray], Any], array: np.ndarray, batch_size: int) -> np.ndarray:
  """np.concatenate of fn(chunk) over chunks of `batch_size` rows; the last chunk is padded by
  repeating its last row (one compiled shape for the whole run) and the padding dropped."""
  if batch_size < 1:
    raise ValueError(f"--batch_size must be >= 1, got {batch_size}")
  array = np.asarray(array)
  outs = []
  for i in range(0, len(array), batch_size):
    chunk = array[i:i + batch_size]
    n = len(chunk)
    if n < batch_size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
    outs.append(np.asarray(fn(chunk))[:n])
  return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def check_num_tokens(tokenizer: Any, num_tokens: int | None, *, flag: str = "--num_tokens") -> int | None:
  """num_tokens (None = all) valid for the tokenizer, or a ValueError naming the flag."""
  k = tokenizer.max_tokens
  if num_tokens is None or k is None:
    return num_tokens
  name = tokenizer.config.get("name")
  if name == "vqgan" and num_tokens != k:
    raise ValueError(f"{flag}: the 2D VQGAN always uses its full grid of {k} tokens, got {num_tokens}")
  if not 1 <= num_tokens <= k:
    raise ValueError(f"{flag} must be in [1, {k}] for this {name} tokenizer (K = {k}), got {num_tokens}")
  return int(num_tokens)
