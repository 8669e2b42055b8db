"""Prompts -> OLMo hidden states: Instella-T2I's text conditioning (tokenizer + frozen `nn.olmo` tower).

  enc = OlmoTextEncoder.from_files("AMD-OLMo-1B/", "AMD-OLMo-1B/tokenizer.json")
  out = enc(["a photo of an astronaut", ""])   # {"features": [L, B, T, W], "mask": [B, T]}

The release (sprintml/BitMark `Instella-T2I/models/diff_model.py`, `BinaryDiffusion.sample`) runs

  tokenizer = AutoTokenizer.from_pretrained('amd/AMD-OLMo-1B', model_max_length=128, padding_side='left')
  text_inputs = tokenizer(prompts + [''] * bsz, truncation=True, padding=True, max_length=128, ...)
  llm_features = llm(**text_inputs, output_hidden_states=True).hidden_states[1:]

and hands the DiT `llm_features` (one per block) and `text_inputs['attention_mask']`. Here: each text
becomes `tokenizer.encode(text, max_length=max_length)` (the tokenizer owns HF's truncation), the
rows are padded on the LEFT with `tokenizer.pad_id` to the longest row of the batch (`padding=True`,
`padding_side='left'`), mask 1 on real tokens, and the tower gives HF's `hidden_states[1:]` as
"features" float32 [L, B, T, W] with "mask" int32 [B, T]. A batch whose texts all encode to no
token (HF would return T = 0) gets T = 1: one padding column, mask 0, which the DiT's mask ignores.

The release runs the LM in bfloat16 (flash_attention_2); `from_files(..., config={"dtype":
"bfloat16"})` computes in that dtype too (parameters stay float32, features are returned float32).

The tower is jitted once; jax.jit keeps one compiled program per (B, T) it has seen, so a training
loop with a fixed caption length compiles once.

`from_config(text_cfg)` builds one from a config's text section (file paths, or a randomly
initialised tiny tower with a byte tokenizer for smoke tests: plumbing only, its features mean
nothing).

Dimension names: B texts, T tokens (the longest row), L layers, W width.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

MAX_LENGTH = 128  # the release's model_max_length / max_length


class ByteTokenizer:
  """A tokenizer without files for smoke tests: a text's UTF-8 bytes b -> ids b + 3 (ids 0..2 are
  left to special tokens; pad_id 1 as in AMD-OLMo-1B), truncated on the right to max_length. The
  tower's vocabulary must hold 259 ids."""

  pad_id = 1
  vocab_size = 259

  def encode(self, text: str, max_length: int | None = None) -> list[int]:
    ids = [b + 3 for b in text.encode("utf-8")]
    return ids if max_length is None else ids[:max_length]


def _check_length(max_length: Any) -> int:
  if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1:
    raise ValueError(f"max_length must be an int >= 1, got {max_length!r}")
  return int(max_length)


class OlmoTextEncoder:
  """An `nn.olmo` tower (config + parameters) with its tokenizer.

  Args:
    config: the `nn.olmo` config (e.g. from `convert.olmo.load`).
    params: its nnx.State.
    tokenizer: any object with `encode(text, max_length=None) -> list[int]` and an int `pad_id`
      (`jaxtok.text.hf_bpe.ByteLevelBPE`, or `ByteTokenizer`).
  """

  def __init__(self, config: Mapping[str, Any], params: Any, tokenizer: Any):
    from jaxtok.nn import olmo  # pylint: disable=g-import-not-at-top
    self.config = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    self.vocab_size = int(self.config.get("vocab_size") or olmo.config_for(
        self.config.get("size", "amd-olmo-1b"))["vocab_size"])
    if not callable(getattr(tokenizer, "encode", None)):
      raise TypeError(f"tokenizer must have encode(text, max_length=None) -> list[int], got "
                      f"{type(tokenizer).__name__}")
    pad = getattr(tokenizer, "pad_id", None)
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or not 0 <= pad < self.vocab_size:
      raise ValueError(f"tokenizer.pad_id must be an int in [0, {self.vocab_size}) (the tower's "
                       f"vocab_size), got {pad!r}")
    self.tokenizer, self.params, self.pad_id = tokenizer, params, int(pad)
    self._fn = jax.jit(olmo.hidden_states_fn(self.config))

  @classmethod
  def from_files(cls, checkpoint_dir: str | os.PathLike, tokenizer_json: str | os.PathLike,
                 config: Mapping[str, Any] | None = None) -> "OlmoTextEncoder":
    """From a HF OLMo checkpoint directory (`convert.olmo.load`; config: overrides such as dtype)
    and its tokenizer.json (`text.hf_bpe.ByteLevelBPE`). Raises ValueError naming a missing file."""
    from jaxtok.convert import olmo as convert_olmo  # pylint: disable=g-import-not-at-top
    if tokenizer_json is None or not os.path.isfile(os.fspath(tokenizer_json)):
      raise ValueError(f"OLMo prompts need the tokenizer.json of the checkpoint (amd/AMD-OLMo-1B's): "
                       f"got {tokenizer_json!r}, which is not a file")
    if checkpoint_dir is None:
      raise ValueError(f"OLMo prompts need the checkpoint directory, got None; expected "
                       f"{convert_olmo.WEIGHTS_HELP}")
    from jaxtok.text import hf_bpe  # pylint: disable=g-import-not-at-top
    cfg, params = convert_olmo.load(checkpoint_dir, config)
    return cls(cfg, params, hf_bpe.ByteLevelBPE.from_file(os.fspath(tokenizer_json)))

  def ids(self, texts: Sequence[str], max_length: int = MAX_LENGTH,
          pad_to: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [B, T], mask int32 [B, T]): the texts' tokens padded on the left with pad_id to the
    longest row (T >= 1) rounded up to a multiple of pad_to, mask 1 on real tokens. The real
    tokens' features do not depend on the left padding (masked keys, relative RoPE), so pad_to only
    bounds the shapes the jitted tower sees."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts) or not len(texts):
      raise TypeError(f"texts must be a non-empty sequence of str, got {texts!r}")
    max_length = _check_length(max_length)
    rows = [list(self.tokenizer.encode(t, max_length=max_length)) for t in texts]
    for text, row in zip(texts, rows):
      if len(row) > max_length:
        raise ValueError(f"tokenizer.encode({text!r}, max_length={max_length}) returned "
                         f"{len(row)} ids (it must truncate)")
      if any(not 0 <= i < self.vocab_size for i in row):
        raise ValueError(f"tokenizer gave ids outside [0, {self.vocab_size}) (the tower's "
                         f"vocab_size) for {text!r}: {row}")
    if isinstance(pad_to, bool) or not isinstance(pad_to, (int, np.integer)) or pad_to < 1:
      raise ValueError(f"pad_to must be an int >= 1, got {pad_to!r}")
    t = max(1, max(len(r) for r in rows))
    t += -t % int(pad_to)
    ids = np.full((len(rows), t), self.pad_id, np.int32)
    mask = np.zeros((len(rows), t), np.int32)
    for i, row in enumerate(rows):
      if row:
        ids[i, t - len(row):], mask[i, t - len(row):] = row, 1
    return ids, mask

  def __call__(self, texts: Sequence[str], max_length: int = MAX_LENGTH,
               pad_to: int = 1) -> dict[str, np.ndarray]:
    """{"features": float32 [L, B, T, W] (HF hidden_states[1:]), "mask": int32 [B, T]}; pad_to as
    in `ids`."""
    ids, mask = self.ids(texts, max_length, pad_to)
    features = self._fn(self.params, jnp.asarray(ids), jnp.asarray(mask))
    return {"features": np.asarray(features), "mask": mask}


def from_config(text_cfg: Mapping[str, Any]) -> OlmoTextEncoder:
  """The OlmoTextEncoder a config's text section names:
    olmo_checkpoint, tokenizer_json   the user's files (`OlmoTextEncoder.from_files`); or
    random_init_for_smoke_test: True with `olmo` (the tower's `nn.olmo` fields, vocab_size >= 259)
      and no files: a randomly initialised tower and `ByteTokenizer` (plumbing only).
  Unknown keys raise ValueError naming the valid ones; missing files raise `from_files`' error."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxtok.nn import olmo  # pylint: disable=g-import-not-at-top
  cfg = dict(text_cfg.to_dict() if hasattr(text_cfg, "to_dict") else text_cfg)
  valid = {"olmo_checkpoint", "tokenizer_json", "random_init_for_smoke_test", "olmo"}
  if set(cfg) - valid:
    raise ValueError(f"unknown OLMo text config key(s) {sorted(set(cfg) - valid)}; valid keys: "
                     f"{sorted(valid)}")
  tower = cfg.get("olmo")
  tower = dict(tower.to_dict() if hasattr(tower, "to_dict") else tower) if tower else None
  if cfg.get("olmo_checkpoint") or cfg.get("tokenizer_json") or not cfg.get(
      "random_init_for_smoke_test"):
    return OlmoTextEncoder.from_files(cfg.get("olmo_checkpoint") or None,
                                      cfg.get("tokenizer_json") or None, tower)
  if tower is None:
    raise ValueError("text.random_init_for_smoke_test needs text.olmo (the tower's fields)")
  if int(tower.get("vocab_size", 0)) < ByteTokenizer.vocab_size:
    raise ValueError(f"the smoke-test tower's vocab_size must be >= {ByteTokenizer.vocab_size} "
                     f"(ByteTokenizer's ids), got {tower.get('vocab_size')!r}")
  params = nnx.state(olmo.make_model(tower, rngs=nnx.Rngs(0)), nnx.Param)
  return OlmoTextEncoder(tower, params, ByteTokenizer())
