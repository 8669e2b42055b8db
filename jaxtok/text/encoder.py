"""Captions -> CLIP text features: the BPE tokenizer and the frozen CLIP text tower together.

  enc = TextEncoder.from_files(weights, merges)        # official CLIP weights + BPE merges file
  feats = enc(["a photo of an astronaut"])             # {"tokens", "penultimate", "pooled"} float32

`tokens` [N, T, W] is what TA-TiTok's decoder reads, `penultimate` [N, T, W] and `pooled` [N, D] what
MaskGen conditions on (see `nn.clip_text`). T is the tower's context length (77 for CLIP). Both
files are the user's: nothing is downloaded, and a missing one is refused with what to supply.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.text import clip_bpe


class TextEncoder:
  """A CLIP text tower (config + parameters) with its BPE tokenizer; calls are jitted per batch
  size.

  Args:
    config: the `nn.clip_text` config.
    params: its nnx.State (e.g. from `convert.clip_text.load`).
    tokenizer: a `clip_bpe.CLIPTokenizer` whose ids fit the tower's vocabulary.
  """

  def __init__(self, config: Mapping[str, Any], params: Any, tokenizer: clip_bpe.CLIPTokenizer):
    from jaxtok.nn import clip_text  # pylint: disable=g-import-not-at-top
    self.config = dict(config)
    vocab = int(self.config.get("vocab_size", 49408))
    if tokenizer.vocab_size > vocab:
      raise ValueError(f"the BPE merges file gives {tokenizer.vocab_size} ids but the CLIP text "
                       f"tower has vocab_size {vocab}: the two files do not belong together")
    self.tokenizer, self.params = tokenizer, params
    self.context_length = int(self.config.get("context_length", clip_bpe.CONTEXT_LENGTH))
    self._fn = jax.jit(clip_text.features_fn(self.config))

  @classmethod
  def from_files(cls, weights: str | os.PathLike | None, merges: str | os.PathLike | None,
                 config: Mapping[str, Any] | None = None) -> "TextEncoder":
    """From an official CLIP weights file (`convert.clip_text.load`; config: overrides) and the BPE
    merges file (`bpe_simple_vocab_16e6.txt.gz`). Raises ValueError naming what is missing."""
    from jaxtok.convert import clip_text as convert_clip  # pylint: disable=g-import-not-at-top
    for name, path in (("CLIP text weights", weights), ("CLIP BPE merges file", merges)):
      if path is None or not os.path.isfile(os.fspath(path)):
        raise ValueError(f"text prompts need the user's {name}: got {path!r}, which is not a file "
                         f"(TA-TiTok / MaskGen use OpenAI CLIP ViT-L/14-336's text tower and "
                         f"bpe_simple_vocab_16e6.txt.gz)")
    cfg, params = convert_clip.load(weights, config)
    return cls(cfg, params, clip_bpe.CLIPTokenizer(merges))

  def ids(self, texts: Sequence[str]) -> np.ndarray:
    """int32 [N, context_length] token ids (`CLIPTokenizer.tokenize`)."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
      raise TypeError(f"texts must be a sequence of str, got {texts!r}")
    return self.tokenizer.tokenize(list(texts), context_length=self.context_length)

  def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """{"tokens" [N, T, W], "penultimate" [N, T, W], "pooled" [N, D]} float32 numpy arrays."""
    out = self._fn(self.params, jnp.asarray(self.ids(texts)))
    return {k: np.asarray(v) for k, v in out.items()}


_ENCODERS: dict[str, TextEncoder] = {}


def from_config(text_cfg: Mapping[str, Any]) -> TextEncoder:
  """`_from_config`, kept per process for the same section and unchanged files (callers such as
  captioned tfds batches ask once per batch; loading the tower each time would dominate)."""
  import json  # pylint: disable=g-import-not-at-top
  cfg = text_cfg.to_dict() if hasattr(text_cfg, "to_dict") else dict(text_cfg)
  files = [(os.stat(p).st_size, os.stat(p).st_mtime_ns) if isinstance(p, str) and os.path.isfile(p)
           else None for p in (cfg.get("clip_weights"), cfg.get("bpe"))]  # a rewritten file reloads
  key = json.dumps([cfg, files], sort_keys=True, default=str)
  if key not in _ENCODERS:
    if len(_ENCODERS) >= 4:
      _ENCODERS.pop(next(iter(_ENCODERS)))
    _ENCODERS[key] = _from_config(text_cfg)
  return _ENCODERS[key]


def _from_config(text_cfg: Mapping[str, Any]) -> TextEncoder:
  """The TextEncoder a config's `text` section names: {clip_weights, bpe} (the user's files), or with `random_init_for_smoke_test` and no files a
  randomly initialised tower of the `clip` fields with a byte-level tokenizer (no merges): plumbing
  only, its features mean nothing. Raises ValueError naming the missing files otherwise."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxtok.nn import clip_text  # pylint: disable=g-import-not-at-top
  get = (lambda k: text_cfg.get(k)) if hasattr(text_cfg, "get") else (lambda k: None)
  clip = get("clip")
  clip = dict(clip.to_dict() if hasattr(clip, "to_dict") else clip) if clip is not None else None
  if get("clip_weights") or get("bpe") or not get("random_init_for_smoke_test"):
    return TextEncoder.from_files(get("clip_weights") or None, get("bpe") or None)
  if clip is None:
    raise ValueError("text.random_init_for_smoke_test needs text.clip (the tower's fields)")
  params = nnx.state(clip_text.make_model(clip, rngs=nnx.Rngs(0)), nnx.Param)
  return TextEncoder(clip, params, clip_bpe.CLIPTokenizer([]))
