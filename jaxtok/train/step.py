"""One jitted training step for every tokenizer recipe: `train_step(state, batch, rng) -> (state, metrics)`.

Abbreviations: B batch, H/W image height/width, K tokens, V proxy-code vocabulary.

The generator (tokenizer) loss is

  L = l1 * |x - x^| + l2 * (x - x^)^2 + perceptual * P(x, x^)          pixel terms, when recon exists
      + quantizer * sum(train_forward losses)                         quantizer / KL / flow, weighted
      + proxy * CE(proxy logits, teacher codes)                        TiTok stage 1
      + gan_weight(step) * (-mean D(x^))                               hinge generator term

and, when a discriminator is configured, the same step updates it with the hinge loss plus LeCAM
(Tseng et al. 2021: lecam * (mean(relu(D(x) - ema_fake)^2) + mean(relu(ema_real - D(x^))^2)), with
EMAs of the mean logits), from `disc_start` on (default `gan_start`): before it the discriminator's
parameters, optimizer state and LeCAM EMAs stay exactly as initialised (its update is skipped with
`lax.cond`) and the generator's GAN weight is 0. The GAN pieces are `jaxtok.losses.gan`; the
perceptual term is `perceptual_fn` (e.g. `jaxtok.losses.perceptual.lpips_loss` with weights loaded
from a file, passed in `frozen["perceptual"]`).

The step knows the model only through its training contract (`jaxtok.tokenizers.api.TrainOutput`):

  out = model.train_forward(images, rng=rng, step=step, target="pixels" | "proxy_logits",
                            perturb=settings or None)

A dict batch with caption inputs (`TEXT_KEYS`: "text_features" float [B, S, C], a caption's CLIP
features, for TA-TiTok's text-aware decoder; "text_ids" int32 / "text_mask" bool [B, L] for TexTok)
also passes them to train_forward under the same names.

target "proxy_logits" when loss.proxy > 0 (TiTok stage 1: out.logits [B, N, V] against the teacher's
codes), "pixels" otherwise. Everything model-specific lives in the model: the kept length (One-D-Piece
tail drop / FlexTok nested dropout, in the model's mode, on every target), the flow loss, and
RobusTok latent perturbation (`loss.perturb`, a dict: alpha, beta, delta, and optionally
anneal_start, anneal_end, end_ratio in steps): after the quantizer's losses, tokens of the first
floor(B * beta) images are replaced by nearby codes with probability alpha (`jaxtok.quantizers.perturb`:
one of the delta nearest codebook entries for VQ, of the delta nearest level-grid neighbours for FSQ,
annealed on the step) before decoding, so the reconstruction, perceptual and GAN terms see the
perturbed tokens.

Frozen parameters (`frozen_patterns`, the optimizer's `optim.frozen_patterns`: TiTok stage 2 and
decoder post-training freeze the encoder, the quantizer and the latent tokens) enter the loss through
`stop_gradient`, so no gradient is computed for them (the encoder's backward pass is not run, as the
release encodes under `torch.no_grad()`) and `grad_norm` is the trainable parameters' norm; the
optimizer gives them a zero update. Non-parameter model variables matching a pattern (an EMA
codebook) and the EMA of frozen parameters keep their values bitwise too. `loss.quantizer` (default
1) weights the model's own losses: the released TiTok stage 2 sets `quantizer_weight: 0.0`.

REPA / GigaTok semantic regularisation (`config.repa`, `jaxtok.losses.repa`): with repa weight > 0 the
step calls train_forward(..., features=True), computes DINOv2's patch features of the images (resized
to the model's feature grid x 14 px) from `frozen["repa"]` under stop_gradient, and adds
`weight * repa.alignment_loss(out.features, dinov2 features)` as `loss/repa`. The DINOv2 parameters
live in `frozen` only: never differentiated, never updated.

The step folds `state["step"]` into the base rng inside the jit, donates the state, and returns
metrics as device scalars (the loop fetches them only when it logs).
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxtok.losses import gan
from jaxtok.losses import repa as repa_lib
from jaxtok.quantizers import perturb as perturb_lib
from jaxtok.train import optim
from jaxtok.train.state import ModelDef, TrainState

f32 = jnp.float32
TEXT_KEYS = ("text_features", "text_ids", "text_mask")  # caption inputs a batch may carry


# --------------------------------------------------------------------------------------------------
# Small pure pieces (float32). The GAN losses live in jaxtok.losses.gan.


def proxy_code_loss(logits: jax.Array, codes: jax.Array) -> jax.Array:
  """Mean cross-entropy between proxy-code logits [B, N, V] and teacher codes int [B, N]."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits.astype(f32), codes))


def _images(batch: Any) -> jax.Array:
  return batch["image"] if isinstance(batch, dict) else batch


def _cfg(section: Any, key: str, default: Any) -> Any:
  if section is None:
    return default
  value = section.get(key, default) if hasattr(section, "get") else getattr(section, key, default)
  return default if value is None else value


def _merge(graphdef: Any, params: nnx.State, model_state: nnx.State | None) -> nnx.Module:
  # Fresh Variable objects for the non-parameter state: the model may write to them inside this trace.
  if model_state is None:
    return nnx.merge(graphdef, params)
  return nnx.merge(graphdef, params, jax.tree.map(lambda x: x, model_state))


PERTURB_KEYS = ("alpha", "beta", "delta", "anneal_start", "anneal_end", "end_ratio")


def perturb_settings(section: Any) -> dict | None:
  """The validated `loss.perturb` dict (alpha, beta, delta [, anneal_start, anneal_end, end_ratio]),
  or None when it is unset / empty."""
  if section is None:
    return None
  cfg = dict(section.items()) if hasattr(section, "items") else None
  if cfg is None:
    raise TypeError(f"loss.perturb must be a dict of {PERTURB_KEYS}, got {type(section).__name__}")
  if not cfg:
    return None
  unknown = sorted(set(cfg) - set(PERTURB_KEYS))
  if unknown:
    raise ValueError(f"loss.perturb has unknown fields {unknown}; expected some of {PERTURB_KEYS}")
  for key in ("alpha", "beta", "delta"):
    if key not in cfg:
      raise ValueError(f"loss.perturb needs {key!r} (fields alpha, beta, delta), got {sorted(cfg)}")
  alpha, beta, delta = float(cfg["alpha"]), float(cfg["beta"]), cfg["delta"]
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"loss.perturb.alpha must lie in [0, 1], got {alpha}")
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f"loss.perturb.beta must lie in [0, 1], got {beta}")
  if not isinstance(delta, int) or isinstance(delta, bool) or delta < 1:
    raise ValueError(f"loss.perturb.delta must be an int >= 1, got {delta!r}")
  out = {"alpha": alpha, "beta": beta, "delta": delta}
  if ("anneal_start" in cfg) != ("anneal_end" in cfg):
    raise ValueError("loss.perturb needs both anneal_start and anneal_end (or neither), got "
                     f"{sorted(cfg)}")
  if "anneal_start" in cfg:
    out.update(anneal_start=float(cfg["anneal_start"]), anneal_end=float(cfg["anneal_end"]),
               end_ratio=float(cfg.get("end_ratio", 0.5)))
    # Validates the schedule fields now rather than at trace time.
    perturb_lib.schedule(0, alpha0=alpha, delta0=delta, anneal_start=out["anneal_start"],
                         anneal_end=out["anneal_end"], end_ratio=out["end_ratio"])
  return out


# --------------------------------------------------------------------------------------------------


def _stop_frozen(params: Any, patterns: tuple[str, ...]) -> Any:
  """`params` with the leaves matching `patterns` behind stop_gradient (no gradient is computed)."""
  if not patterns:
    return params
  mask = optim.frozen_mask(params, patterns)
  return jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, mask)


def _keep_frozen(old: Any, new: Any, patterns: tuple[str, ...]) -> Any:
  """`new` with the leaves matching `patterns` taken from `old` (bitwise)."""
  if not patterns:
    return new
  mask = optim.frozen_mask(old, patterns)
  return jax.tree.map(lambda o, n, f: o if f else n, old, new, mask)


def make_train_step(model: ModelDef, loss_cfg: Any, tx: optax.GradientTransformation, *,
                    state_shardings: Any, ema_decay: float = 0.0,
                    disc: ModelDef | None = None, disc_tx: optax.GradientTransformation | None = None,
                    perceptual_fn: Callable[[Any, jax.Array, jax.Array], jax.Array] | None = None,
                    teacher_fn: Callable[[Any, jax.Array], jax.Array] | None = None,
                    frozen: Any = None, lr_schedule: Callable | None = None,
                    repa: Any = None, repa_fn: Callable | None = None,
                    on_trace: Callable[[], None] | None = None,
                    frozen_patterns: Sequence[str] = (),
                    resample_fn: Callable | None = None) -> Callable:
  """Builds the jitted `train_step(state, batch, rng) -> (state, metrics)`.

  Args:
    model: graphdef + init of the tokenizer; its module has `train_forward(images, *, rng, step,
      target, perturb) -> TrainOutput` (see the module docstring and `tokenizers.api.TrainOutput`).
    loss_cfg: section with l1, l2, perceptual, proxy, gan, gan_start, disc_start, lecam, lecam_decay,
      perturb (missing ones are 0 / off; see the module docstring).
    tx: the tokenizer optimizer (its state is state["opt_state"]).
    state_shardings: NamedShardings of the TrainState (out_shardings of the step).
    ema_decay: > 0 keeps state["ema_params"].
    disc, disc_tx: discriminator (module `__call__(images [B,H,W,3]) -> logits`) and its optimizer.
    perceptual_fn: `perceptual_fn(frozen["perceptual"], x, x^) -> scalar`, used when loss.perceptual > 0.
    teacher_fn: `teacher_fn(frozen["teacher"], x) -> codes int32 [B, N]` (TiTok stage 1 proxy codes,
      N = g*g row-major); the student's logits are `train_forward(..., target="proxy_logits").logits`.
    frozen: pytree of frozen parameters passed to perceptual_fn / teacher_fn / repa_fn (not donated).
    repa: the `config.repa` section (`losses.repa.settings`: weight, weights, prefix, dinov2) or None.
    repa_fn: `repa_fn(frozen["repa"], images, grid) -> [B, grid*grid, D]` DINOv2 patch features
      (`losses.repa.load_teacher`), needed when repa.weight > 0.
    lr_schedule: step -> learning rate, reported in the metrics.
    on_trace: called each time the step is traced (tests count compilations with it).
    frozen_patterns: path regular expressions of the model's frozen variables (see the module
      docstring); pass the optimizer's `frozen_patterns`.
    resample_fn: RobusTok generator-sampled post-training (`jaxtok.train.posttrain.load`):
      `resample_fn(frozen["generator"], tokens, labels, rng) -> (tokens, metrics)` replaces the
      encoder's tokens by teacher-forced generator samples before decoding (labels: the batch's
      "label" when it has one, else None).

  Returns:
    train_step(state, batch, rng): batch is images [B,H,W,3] float32 in [0,1] or {"image": ...};
    rng is the run's base key (replicated); returns the new state and a dict of f32 scalars.
  """
  l1 = float(_cfg(loss_cfg, "l1", 0.0))
  l2 = float(_cfg(loss_cfg, "l2", 0.0))
  w_perc = float(_cfg(loss_cfg, "perceptual", 0.0))
  w_proxy = float(_cfg(loss_cfg, "proxy", 0.0))
  w_gan = float(_cfg(loss_cfg, "gan", 0.0))
  gan_start = int(_cfg(loss_cfg, "gan_start", 0))
  disc_start = int(_cfg(loss_cfg, "disc_start", gan_start))
  w_lecam = float(_cfg(loss_cfg, "lecam", 0.0))
  lecam_decay = float(_cfg(loss_cfg, "lecam_decay", 0.999))
  w_model = float(_cfg(loss_cfg, "quantizer", 1.0))
  frozen_patterns = tuple(frozen_patterns or ())
  for name, v in (("l1", l1), ("l2", l2), ("perceptual", w_perc), ("proxy", w_proxy), ("gan", w_gan),
                  ("lecam", w_lecam), ("quantizer", w_model)):
    if v < 0:
      raise ValueError(f"loss weight {name} must be >= 0, got {v}")
  if w_perc > 0 and perceptual_fn is None:
    raise ValueError("loss.perceptual > 0 needs a perceptual network loaded from a weights file "
                     "(config.loss.perceptual_weights), got perceptual_fn=None")
  if w_proxy > 0 and teacher_fn is None:
    raise ValueError("loss.proxy > 0 (TiTok stage 1) needs a teacher tokenizer (config.teacher)")
  if w_gan > 0 and disc is None:
    raise ValueError("loss.gan > 0 needs a discriminator (config.disc)")
  if gan_start < 0 or disc_start < 0:
    raise ValueError(f"loss.gan_start and loss.disc_start must be >= 0, got {gan_start}, {disc_start}")
  if not 0.0 <= lecam_decay < 1.0:
    raise ValueError(f"loss.lecam_decay must lie in [0, 1), got {lecam_decay}")
  perturb_cfg = perturb_settings(_cfg(loss_cfg, "perturb", None))
  if perturb_cfg is not None and w_proxy > 0:
    raise ValueError("loss.perturb applies to pixel training; it cannot be combined with loss.proxy > 0 "
                     "(TiTok stage 1)")
  target = "proxy_logits" if w_proxy > 0 else "pixels"
  repa_cfg = repa_lib.settings(repa)
  w_repa = repa_cfg["weight"] if repa_cfg is not None else 0.0
  if w_repa > 0 and repa_fn is None:
    raise ValueError(f"config.repa.weight > 0 needs the frozen DINOv2 (repa_fn from "
                     f"losses.repa.load_teacher, reading {repa_lib.WEIGHTS_HELP}), got repa_fn=None")
  if disc is not None and disc_tx is None:
    raise ValueError("a discriminator needs its optimizer: disc_tx is None")
  if not 0.0 <= ema_decay < 1.0:
    raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay}")
  if resample_fn is not None and perturb_cfg is not None:
    raise ValueError("config.posttrain (generator-sampled tokens) and loss.perturb are two variants of "
                     "post-training; set one of them (the release's post-training has beta 0: no "
                     "perturbation)")
  if resample_fn is not None and w_proxy > 0:
    raise ValueError("config.posttrain applies to pixel training; it cannot be combined with "
                     "loss.proxy > 0 (TiTok stage 1)")

  def _repa_term(features, images, dino_params):
    if features is None:
      raise ValueError("config.repa.weight > 0 but the model returned no features: build it with "
                       "repa_layer > 0 (configs.common.add_repa sets the model fields)")
    grid = math.isqrt(features.shape[1])
    if grid * grid != features.shape[1]:
      raise ValueError(f"REPA features must lie on a square token grid, got {features.shape[1]} tokens")
    targets = repa_fn(dino_params, images, grid)
    if targets.shape[-1] != features.shape[-1]:
      raise ValueError(f"the model's repa_dim {features.shape[-1]} must equal the DINOv2 width "
                       f"{targets.shape[-1]} (config.model.repa_dim)")
    return repa_lib.alignment_loss(features, targets)

  def step_fn(state: TrainState, batch: Any, rng: jax.Array, frozen: Any):
    if on_trace is not None:
      on_trace()
    images = _images(batch).astype(f32)
    step = state["step"]
    k_model, _ = jax.random.split(jax.random.fold_in(rng, step))
    model_state = state.get("model_state")
    disc_model = nnx.merge(disc.graphdef, state["disc_params"]) if disc is not None else None
    codes = teacher_fn(frozen["teacher"], images) if w_proxy > 0 else None

    def gen_loss(params):
      params = _stop_frozen(params, frozen_patterns)
      m = _merge(model.graphdef, params, model_state)
      terms = {}
      extra = {}
      if w_repa > 0:
        if "features" not in inspect.signature(m.train_forward).parameters:
          raise ValueError(f"config.repa needs a model whose train_forward returns decoder features "
                           f"(features=True: FlexTok, TiTok); {type(m).__name__} has none")
        extra["features"] = True
      if resample_fn is not None:
        if "resample" not in inspect.signature(m.train_forward).parameters:
          raise ValueError(f"config.posttrain needs a model whose train_forward takes resample= "
                           f"(TiTok / One-D-Piece); {type(m).__name__} has none")
        labels = batch.get("label") if isinstance(batch, dict) else None
        extra["resample"] = lambda tok, key: resample_fn(frozen["generator"], tok, labels, key)
      # Text-aware models read the batch's caption inputs (TA-TiTok text_features, TexTok ids).
      extra.update({k: batch[k] for k in TEXT_KEYS if isinstance(batch, dict) and k in batch})
      out = m.train_forward(images, rng=k_model, step=step, target=target, perturb=perturb_cfg,
                            **extra)
      recon, model_losses, model_metrics = out.recon, dict(out.losses), dict(out.metrics)
      if w_repa > 0:
        terms["repa"] = w_repa * _repa_term(out.features, images, frozen["repa"])
      if w_proxy > 0:
        terms["proxy_ce"] = w_proxy * proxy_code_loss(out.logits, codes)
      if recon is not None:
        r = recon.astype(f32)
        if l1 > 0:
          terms["l1"] = l1 * jnp.mean(jnp.abs(r - images))
        if l2 > 0:
          terms["l2"] = l2 * jnp.mean(jnp.square(r - images))
        if w_perc > 0:
          terms["perceptual"] = w_perc * perceptual_fn(frozen["perceptual"], images, r).astype(f32)
        if disc_model is not None and w_gan > 0:
          terms["gan_g"] = gan.gan_weight(step, gan_start, w_gan) * gan.hinge_g_loss(disc_model(r))
      if w_model > 0:
        for k, v in model_losses.items():
          terms[f"model/{k}"] = w_model * jnp.asarray(v, f32)
      total = sum(terms.values()) if terms else jnp.zeros((), f32)
      new_model_state = nnx.state(m, nnx.Not(nnx.Param)) if model_state is not None else None
      if new_model_state is not None:
        new_model_state = _keep_frozen(model_state, new_model_state, frozen_patterns)
      return total, (terms, model_metrics, recon, new_model_state)

    (total, (terms, model_metrics, recon, new_model_state)), grads = jax.value_and_grad(
        gen_loss, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new = dict(state)
    new.update(step=step + 1, params=params, opt_state=opt_state)
    if new_model_state is not None:
      new["model_state"] = new_model_state
    if ema_decay > 0:
      # A frozen leaf's EMA is kept as is: decay * p + (1 - decay) * p need not round back to p.
      new["ema_params"] = _keep_frozen(state["ema_params"],
                                       optim.ema_update(state["ema_params"], params, ema_decay),
                                       frozen_patterns)

    metrics = {"loss": total, "grad_norm": optax.tree.norm(grads)}
    metrics.update({f"loss/{k}": v for k, v in terms.items()})
    for k, v in model_metrics.items():
      v = jnp.asarray(v)
      if v.ndim == 0:  # only scalars are logged; histograms stay in the model's own tools.
        metrics[f"model/{k}"] = v.astype(f32)
    if lr_schedule is not None:
      metrics["lr"] = jnp.asarray(lr_schedule(step), f32)

    if disc is not None and recon is not None:
      fake = jax.lax.stop_gradient(recon).astype(f32)

      def disc_loss(d_params, lecam_state):
        dm = nnx.merge(disc.graphdef, d_params)
        real_logits, fake_logits = dm(images), dm(fake)
        loss = gan.hinge_d_loss(real_logits, fake_logits)
        if w_lecam > 0:
          loss = loss + w_lecam * gan.lecam_loss(real_logits, fake_logits, lecam_state)
        return loss, (real_logits, fake_logits)

      def update(operands):
        d_params, d_opt, lecam_state = operands
        (d_loss, (real_logits, fake_logits)), d_grads = jax.value_and_grad(disc_loss, has_aux=True)(
            d_params, lecam_state)
        d_updates, d_opt = disc_tx.update(d_grads, d_opt, d_params)
        d_params = optax.apply_updates(d_params, d_updates)
        lecam_state = gan.lecam_update(lecam_state, real_logits, fake_logits, decay=lecam_decay)
        stats = {"disc/loss": d_loss, "disc/logits_real": jnp.mean(real_logits.astype(f32)),
                 "disc/logits_fake": jnp.mean(fake_logits.astype(f32)),
                 "disc/grad_norm": optax.tree.norm(d_grads).astype(f32)}
        return (d_params, d_opt, lecam_state), stats

      def skip(operands):
        zero = jnp.zeros((), f32)
        return operands, {"disc/loss": zero, "disc/logits_real": zero, "disc/logits_fake": zero,
                          "disc/grad_norm": zero}

      active = step >= disc_start
      # Before disc_start the discriminator, its optimizer and the LeCAM EMAs stay as initialised.
      (d_params, d_opt, lecam_state), d_metrics = jax.lax.cond(
          active, update, skip, (state["disc_params"], state["disc_opt_state"], state["lecam_state"]))
      new.update(disc_params=d_params, disc_opt_state=d_opt, lecam_state=lecam_state)
      metrics.update(d_metrics)
      metrics["disc/active"] = active.astype(f32)
    return new, metrics

  jitted = jax.jit(step_fn, donate_argnums=(0,), out_shardings=(state_shardings, None))

  def train_step(state: TrainState, batch: Any, rng: jax.Array):
    return jitted(state, batch, rng, frozen)

  train_step.jitted = jitted  # exposed for AOT lowering / cost analysis.
  return train_step
