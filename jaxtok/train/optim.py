"""Optimizer recipes of the tokenizer papers: AdamW, warmup + cosine, weight-decay masks, EMA.

TiTok / One-D-Piece / MaskGIT-VQGAN all train with AdamW, a linear warmup into a cosine decay to an
end learning rate, global-norm clipping at 1.0, no weight decay on norms, biases and embedding-like
parameters (latent tokens, mask tokens, positional embeddings, codebooks), and an EMA of the weights
used for evaluation. Everything here is a pure function or an optax transformation.

Parameter trees are `nnx.State`s (or any pytree); masks are decided from key paths and ndim.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax

# Path fragments (regular expressions, searched in the "/"-joined lower-case key path) of parameters
# that never decay. One-dimensional parameters (biases, norm scales) never decay whatever their name.
# `^vae/` is FlexTok's VAE: frozen (its outputs are stop-gradient'ed, so Adam's update is exactly 0)
# and loaded from the release, so decoupled weight decay must not shrink it either.
NO_DECAY_PATTERNS: tuple[str, ...] = (
    r"bias", r"norm", r"(^|[/_])ln", r"embed", r"latent_token", r"mask_token", r"codebook",
    r"register", r"cls_token", r"class_token", r"pos_emb", r"gamma", r"^vae/",
    r"^siglip/", r"^t5/",  # frozen towers: TokenFlow / DualToken SigLIP, TexTok T5 (stop-gradient)
)


def path_to_str(path: Sequence[Any]) -> str:
  """Joins a jax key path into "a/b/0/c", dropping the Variable `value` attribute of nnx States."""
  parts = []
  for key in path:
    name = getattr(key, "key", None)
    if name is None:
      name = getattr(key, "name", None)
    if name is None:
      name = getattr(key, "idx", key)
    if str(name) in ("value", "raw_value"):
      continue
    parts.append(str(name))
  return "/".join(parts)


def decay_mask(params: Any, patterns: Sequence[str] = NO_DECAY_PATTERNS) -> Any:
  """Bool tree, True where weight decay applies: ndim >= 2 and no path fragment in `patterns`.

  Args:
    params: pytree of arrays (or ShapeDtypeStructs), e.g. an nnx.State of parameters.
    patterns: regular expressions searched in the lower-case "/"-joined key path.
  """
  compiled = [re.compile(p) for p in patterns]

  def decide(path, leaf):
    name = path_to_str(path).lower()
    return bool(len(getattr(leaf, "shape", ())) >= 2 and not any(c.search(name) for c in compiled))

  return jax.tree_util.tree_map_with_path(decide, params)


def frozen_mask(params: Any, patterns: Sequence[str]) -> Any:
  """Bool tree, True where a path fragment in `patterns` matches (the frozen parameters)."""
  compiled = [re.compile(p) for p in patterns]
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(c.search(path_to_str(path).lower()) for c in compiled), params)


def check_frozen_patterns(params: Any, patterns: Sequence[str]) -> None:
  """Raises ValueError naming every pattern of `patterns` that matches no parameter path.

  A frozen pattern that matches nothing (a typo, a renamed module) would silently train what the
  recipe meant to freeze.
  """
  names = [path_to_str(path).lower() for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  unused = [p for p in patterns if not any(re.search(p, n) for n in names)]
  if unused:
    raise ValueError(f"frozen_patterns {unused} match no parameter path; expected each to match at "
                     f"least one of the {len(names)} paths, e.g. {names[:6]}")


def frozen_labels(params: Any, patterns: Sequence[str]) -> Any:
  """"frozen" / "train" label tree for `optax.multi_transform` (checks every pattern matches)."""
  check_frozen_patterns(params, patterns)
  return jax.tree.map(lambda f: "frozen" if f else "train", frozen_mask(params, patterns))


def warmup_cosine(*, base_lr: float, total_steps: int, warmup_steps: int = 0, end_lr: float = 0.0,
                  init_lr: float = 0.0) -> optax.Schedule:
  """Learning rate: linear from `init_lr` to `base_lr` over `warmup_steps`, then a half cosine to
  `end_lr` at `total_steps` (constant afterwards).

  lr(s) = end + (base - end) * (1 + cos(pi * (s - W) / (T - W))) / 2   for W <= s <= T.
  """
  if total_steps <= 0:
    raise ValueError(f"total_steps must be positive, got {total_steps}")
  if not 0 <= warmup_steps <= total_steps:
    raise ValueError(f"warmup_steps must lie in [0, total_steps={total_steps}], got {warmup_steps}")
  if base_lr < 0 or end_lr < 0:
    raise ValueError(f"learning rates must be >= 0, got base_lr={base_lr}, end_lr={end_lr}")

  def schedule(step):
    s = jnp.asarray(step, jnp.float32)
    warm = init_lr + (base_lr - init_lr) * s / max(warmup_steps, 1)
    frac = jnp.clip((s - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
    cos = end_lr + (base_lr - end_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return jnp.where(s < warmup_steps, warm, cos)

  return schedule


def make_optimizer(*, base_lr: float, total_steps: int, warmup_steps: int = 0, end_lr: float = 0.0,
                   b1: float = 0.9, b2: float = 0.99, eps: float = 1e-8, weight_decay: float = 1e-4,
                   grad_clip: float | None = 1.0, mu_dtype: Any = None,
                   no_decay_patterns: Sequence[str] = NO_DECAY_PATTERNS,
                   frozen_patterns: Sequence[str] = ()) -> optax.GradientTransformation:
  """Global-norm clipping then AdamW with the warmup-cosine schedule and the decay mask.

  Args:
    frozen_patterns: path regular expressions (as `no_decay_patterns`) of parameters that never change
      (TiTok stage 2, decoder post-training): `optax.multi_transform` sends them to `set_to_zero`, so
      their update is exactly 0 whatever their gradient, they get no Adam moments (no optimizer
      memory) and no weight decay, and the global-norm clip sees only the trainable gradients. Each
      pattern must match at least one parameter (ValueError at `init` otherwise).
    mu_dtype: dtype of Adam's first moment (e.g. "bfloat16" to halve its memory); None keeps the
      parameter dtype.
    grad_clip: maximum global gradient norm; None or <= 0 disables clipping.
  """
  for name, value in (("b1", b1), ("b2", b2)):
    if not 0.0 <= value < 1.0:
      raise ValueError(f"{name} must lie in [0, 1), got {value}")
  if weight_decay < 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
  schedule = warmup_cosine(base_lr=base_lr, total_steps=total_steps, warmup_steps=warmup_steps,
                           end_lr=end_lr)
  frozen = tuple(frozen_patterns)
  for p in frozen:
    try:
      re.compile(p)
    except re.error as err:
      raise ValueError(f"frozen_patterns entries must be regular expressions, got {p!r}: {err}") from None
  adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                      mu_dtype=jnp.dtype(mu_dtype) if mu_dtype else None,
                      mask=lambda params: decay_mask(params, no_decay_patterns))
  parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip is not None and grad_clip > 0 else []
  parts.append(adamw)
  tx = optax.chain(*parts) if len(parts) > 1 else adamw
  if not frozen:
    return tx
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                               lambda params: frozen_labels(params, frozen))


def optimizer_from_config(cfg: Any, total_steps: int) -> optax.GradientTransformation:
  """`make_optimizer` from a config section with fields lr, warmup_steps, end_lr, b1, b2, wd, clip,
  mu_dtype, no_decay_patterns, frozen_patterns (the missing ones take the defaults)."""
  get = lambda k, d: cfg.get(k, d) if hasattr(cfg, "get") else getattr(cfg, k, d)
  return make_optimizer(
      base_lr=float(get("lr", 1e-4)), total_steps=int(total_steps),
      warmup_steps=int(get("warmup_steps", 0)), end_lr=float(get("end_lr", 0.0)),
      b1=float(get("b1", 0.9)), b2=float(get("b2", 0.99)), eps=float(get("eps", 1e-8)),
      weight_decay=float(get("wd", 1e-4)), grad_clip=get("clip", 1.0), mu_dtype=get("mu_dtype", None),
      no_decay_patterns=tuple(get("no_decay_patterns", NO_DECAY_PATTERNS)),
      frozen_patterns=tuple(get("frozen_patterns", None) or ()))


def ema_update(ema: Any, params: Any, decay: float | jax.Array) -> Any:
  """One EMA step, ema <- decay * ema + (1 - decay) * params, computed in float32.

  After n steps with constant params p: ema_n = p + decay**n * (ema_0 - p).
  """
  def upd(e, p):
    out = decay * e.astype(jnp.float32) + (1.0 - decay) * p.astype(jnp.float32)
    return out.astype(e.dtype)
  return jax.tree.map(upd, ema, params)
