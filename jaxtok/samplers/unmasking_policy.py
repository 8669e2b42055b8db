"""A learned unmasking policy for masked diffusion over tokens, trained by group-relative policy
gradient (after "Learning Unmasking Policies for Diffusion Language Models": sampling as a Markov
decision process with the frozen denoiser as the environment, a one-layer transformer policy that
maps the denoiser's token confidences to unmasking decisions, trained with GRPO).

B: batch, K: tokens, V: vocabulary; ``logits_fn(tokens int32 [B, K]) -> logits [B, K, V]`` (the
frozen masked-diffusion model), the mask id explicit.

State features per position (F = 3): the denoiser's confidence max_v p(v) at a masked position (0
at a revealed one), the masked flag, and the fraction of positions still masked. The policy
(`UnmaskingPolicy`: a linear embedding, one bidirectional `nn.Block`, a linear read-out) gives a
logit per position; each masked position is unmasked with probability sigmoid(logit), independently
(a Bernoulli action per position), and revealed positions can never be selected (their
probability is 0). Environment rules: if a step selects nothing while masks remain, the masked
position with the highest policy logit is unmasked (progress); the last of `max_steps` steps
unmasks everything left. Unmasked positions take a draw from the denoiser's logits of that step.

Objective (`grpo_loss`): for each prompt, G rollouts; reward r = reward_fn(final tokens) -
nfe_penalty * (model calls); group-relative advantages A = (r - mean_group) / (std_group + 1e-6);
loss = -mean(A * log pi(actions)), log pi summed over steps and masked positions. One gradient
step per batch of fresh on-policy rollouts, so GRPO's importance ratio is 1 and its clipping is
inactive; the KL penalty to a reference policy is omitted.

Training (`train`): `updates` GRPO steps in one `lax.scan` (pure and jit-able: the policy's
parameters and optax state in, trained parameters and per-update metrics out), update i on fresh
rollouts from ``fold_in(rng, i)``, the denoiser frozen (only the policy's parameters get gradients).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxtok.nn.block import Block
from jaxtok.samplers import _checks, categorical

NUM_FEATURES = 3


class UnmaskingPolicy(nnx.Module):
  """features float32 [B, K, 3] -> unmasking logits float32 [B, K]."""

  def __init__(self, *, width: int = 32, heads: int = 2, rngs: nnx.Rngs):
    self.inp = nnx.Linear(NUM_FEATURES, width, rngs=rngs)
    self.block = Block(width, heads, mlp_hidden=2 * width, rngs=rngs)
    self.out = nnx.Linear(width, 1, rngs=rngs)

  def __call__(self, features: jax.Array) -> jax.Array:
    return self.out(self.block(self.inp(features)))[..., 0]


def features(logits: jax.Array, masked: jax.Array) -> jax.Array:
  """The policy's state [B, K, 3] from the denoiser's logits [B, K, V] and the mask [B, K]."""
  conf = jnp.where(masked, jnp.max(jax.nn.softmax(logits, -1), -1), 0.0)
  frac = jnp.broadcast_to(jnp.mean(masked, -1, keepdims=True), masked.shape)
  return jnp.stack([conf, masked.astype(jnp.float32), frac.astype(jnp.float32)], -1)


class Rollout(NamedTuple):
  tokens: jax.Array    # int32 [B, K]
  log_prob: jax.Array  # float32 [B]: log pi of the sampled Bernoulli actions, summed
  calls: jax.Array     # int32 [B]: denoiser calls while masks remained
  step_of: jax.Array   # int32 [B, K]: step that revealed each position (-1: given)


def rollout(rng, policy_fn: Callable, logits_fn: Callable, tokens, *, mask_id: int, max_steps: int,
            temperature=1.0) -> Rollout:
  """Runs the policy for `max_steps` steps (one lax.scan); step s uses ``fold_in(rng, s)``."""
  _checks.positive_int("max_steps", max_steps)
  b, k = tokens.shape

  def body(carry, s):
    tok, logp, calls, step_of = carry
    masked = tok == mask_id
    live = masked.any(-1)
    k_act, k_tok = jax.random.split(jax.random.fold_in(rng, s))
    logits = jnp.asarray(logits_fn(tok), jnp.float32)
    if mask_id < logits.shape[-1]:
      logits = logits.at[..., mask_id].set(-jnp.inf)
    score = policy_fn(jax.lax.stop_gradient(features(logits, masked)))
    act = masked & (jax.random.uniform(k_act, (b, k)) < jax.nn.sigmoid(score))
    act = jax.lax.stop_gradient(act)
    step_logp = jnp.where(masked, jnp.where(act, jax.nn.log_sigmoid(score),
                                            jax.nn.log_sigmoid(-score)), 0.0).sum(-1)
    last = s == max_steps - 1
    logp = logp + jnp.where(live & ~last, step_logp, 0.0)
    fallback = jnp.arange(k)[None] == jnp.argmax(jnp.where(masked, score, -jnp.inf), -1)[:, None]
    reveal = jnp.where(last, masked, jnp.where(act.any(-1, keepdims=True), act, fallback & masked))
    drawn = categorical.sample(k_tok, logits, temperature=temperature)
    return (jnp.where(reveal, drawn, tok), logp, calls + live.astype(jnp.int32),
            jnp.where(reveal, s, step_of)), None

  init = (tokens.astype(jnp.int32), jnp.zeros((b,), jnp.float32), jnp.zeros((b,), jnp.int32),
          jnp.full((b, k), -1, jnp.int32))
  (tok, logp, calls, step_of), _ = jax.lax.scan(body, init, jnp.arange(max_steps))
  return Rollout(tok, logp, calls, step_of)


def group_advantages(rewards: jax.Array, group: int) -> jax.Array:
  """(r - group mean) / (group std + 1e-6) for rewards [P * G] laid out prompt-major."""
  r = rewards.reshape(-1, group)
  return ((r - r.mean(-1, keepdims=True)) / (r.std(-1, keepdims=True) + 1e-6)).reshape(-1)


def grpo_loss(policy: UnmaskingPolicy, rng, logits_fn: Callable, reward_fn: Callable, prompts, *,
              mask_id: int, group: int, max_steps: int, nfe_penalty: float = 0.0):
  """GRPO loss (float32 scalar) and metrics {reward, calls} on prompts int32 [P, K] (G rollouts
  each). reward_fn(tokens int32 [N, K]) -> float32 [N]."""
  tokens = jnp.repeat(prompts, group, axis=0)
  out = rollout(rng, policy, logits_fn, tokens, mask_id=mask_id, max_steps=max_steps)
  reward = reward_fn(out.tokens) - nfe_penalty * out.calls
  adv = jax.lax.stop_gradient(group_advantages(reward, group))
  return -jnp.mean(adv * out.log_prob), {"reward": reward.mean(), "calls": out.calls.mean()}


def train(rng, graphdef, params, optimizer: optax.GradientTransformation, opt_state,
          logits_fn: Callable, reward_fn: Callable, prompts, *, updates: int, mask_id: int,
          group: int, max_steps: int, nfe_penalty: float = 0.0):
  """`updates` GRPO steps of the policy (graphdef, params) with `optimizer` from `opt_state`.

  Returns (params, opt_state, metrics) with metrics {loss, reward, calls} float32 [updates] (the
  mean reward and model calls of each update's own rollouts, before its step). Pure: jit it with
  graphdef, optimizer, the callables and the keyword arguments static (closed over).
  """
  _checks.positive_int("updates", updates)
  _checks.positive_int("group", group)

  def step(carry, i):
    params, opt_state = carry
    loss_fn = lambda p: grpo_loss(nnx.merge(graphdef, p), jax.random.fold_in(rng, i), logits_fn,
                                  reward_fn, prompts, mask_id=mask_id, group=group,
                                  max_steps=max_steps, nfe_penalty=nfe_penalty)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    delta, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, delta), opt_state), dict(metrics, loss=loss)

  (params, opt_state), metrics = jax.lax.scan(step, (params, opt_state),
                                              jnp.arange(updates, dtype=jnp.int32))
  return params, opt_state, metrics
