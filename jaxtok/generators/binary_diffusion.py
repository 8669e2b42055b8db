"""Binary (Bernoulli) diffusion over bit-vector tokens, Instella-T2I's diffusion generator.

Tokens are bits int32 [B, N, n] in {0, 1}: N tokens (a 1D binary tokenizer's latents, e.g.
`configs/instella.py`) of n bits each.

Corruption (Instella-T2I's released training code, following Binary Latent Diffusion): continuous
time t in [0, 1], each bit independently
    x_t ~ Bernoulli(x_0 (1 - t) + t / 2),
so P(x_t = x_0) = 1 - t / 2: t = 0 is the data, t = 1 is uniform noise (`corrupt`, `keep_prob`).
Training draws t per sample from `time_sampling`: "logit_normal" (the release's configs set
`non_uniform_t = True`: t = sigmoid(e), e ~ N(0, 1), torch's LogisticNormal(0, 1) on two classes,
first component) or "uniform" (t ~ U(0, 1), the release's fallback and this module's behaviour
before the release was checked). The model default is "uniform" so that stored configs train as
they did; `configs/binary_diffusion.py` selects "logit_normal".

Parameterisation ("epsilon" in the release): the network outputs flip logits f, the logit of
P(x_0 != x_t); the logits of x_0 = 1 are then (1 - 2 x_t) f (`x0_logits`), and the loss is the binary
cross-entropy of those logits against x_0, averaged over every bit (`loss`).

The network: bits -> Linear(n, W) plus a learned position embedding, with a class token and a time
token (sinusoidal features of t, `nn.embeddings.timestep_embedding`, through a Linear) in front, a
bidirectional `TokenTrunk`, and n flip logits per token. (The release conditions on text through
AdaLN-Zero MMDiT blocks; here the condition is a class id and t is a token, the trunk being the
library's one transformer.)

Sampling: `jaxtok.samplers.binary_diffusion` (the release's "protocol 1", and "protocol 2" as an
option).

Checked against the release (Instella-T2I `models/diff_model.py`, `scripts/train_diff.py`,
`configs/diff_config.py`, `test_diff.py`, vendored in sprintml/BitMark):
  - corruption x_t ~ Bernoulli(x_0 (1 - t) + t / 2) (`BinaryDiffusion.add_noise`): same.
  - target "epsilon" (the configs' `prediction_target`): x_0 logits = x_t (-f) + (1 - x_t) f, BCE
    with logits against x_0, mean over all bits: same (`x0_logits`, `loss`). The release's "x"
    target (the output is the x_0 logits directly) is not offered.
  - time: the release samples logit-normal t (`non_uniform_t = True`); this module sampled U(0, 1)
    only. Fixed: `time_sampling` (above).
  - data: bits of the autoencoder in eval mode (deterministic threshold): the tokens pretokenized
    with `train=False` here.
  - network (not matched, documented): the release runs AdaLN-Zero blocks (diffusers
    AdaLayerNormZero, GELU-tanh FeedForward, q/k RMS-normed attention) whose attention also reads a
    per-layer projection of one hidden state of the AMD-OLMo-1B text model, a learned per-block
    position embedding, a TimestepEmbedding of the raw t (Linear(1, W), SiLU, Linear) and an
    AdaLayerNormContinuous output. Here: class (or null) and time tokens in front of the library's
    bidirectional `TokenTrunk`, sinusoidal time features. OLMo conversion is out of scope.
  - classifier-free guidance on the flip logits after the temperature, (1 + w) c - w u with the
    empty prompt as u: same (`generate`; the class-dropout null class plays the empty prompt).
Dimension names: B batch, N tokens, n bits per token, W width, C classes.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.generators.trunk import TokenTrunk, check_generator_args, class_condition
from jaxtok.nn.embeddings import timestep_embedding
from jaxtok.nn.options import model_kwargs
from jaxtok.sharding import logical_init

FIELDS = ("num_bits", "seq_len", "num_classes", "width", "depth", "heads", "mlp_ratio",
          "class_dropout")
DIFFUSION_FIELDS = FIELDS + ("time_sampling",)
TIME_SAMPLING = ("uniform", "logit_normal")


def sample_times(rng: jax.Array, batch: int, kind: str = "uniform") -> jax.Array:
  """Training times t float32 [batch] in (0, 1): "uniform" U(0, 1) or "logit_normal" sigmoid(N(0, 1))
  (the release's `logistic_normal_t_sample`: LogisticNormal(0, 1) over two classes, whose first
  component is sigmoid of the normal draw)."""
  if kind == "uniform":
    return jax.random.uniform(rng, (batch,))
  if kind == "logit_normal":
    return jax.nn.sigmoid(jax.random.normal(rng, (batch,)))
  raise ValueError(f"time_sampling must be one of {TIME_SAMPLING}, got {kind!r}")


def keep_prob(t: jax.Array) -> jax.Array:
  """P(x_t = x_0) = 1 - t / 2 of the corruption at time t (float32, t's shape)."""
  return 1.0 - 0.5 * jnp.asarray(t, jnp.float32)


def corrupt(rng: jax.Array, bits: jax.Array, t: jax.Array) -> jax.Array:
  """x_t int32 [B, ...] ~ Bernoulli(x_0 (1 - t) + t / 2) for bits [B, ...] in {0, 1} and t [B]."""
  t = jnp.asarray(t, jnp.float32).reshape((-1,) + (1,) * (bits.ndim - 1))
  p_one = bits.astype(jnp.float32) * (1.0 - t) + 0.5 * t
  return jax.random.bernoulli(rng, p_one).astype(jnp.int32)


def x0_logits(flip_logits: jax.Array, x_t: jax.Array) -> jax.Array:
  """Logits of x_0 = 1 from flip logits (logit of x_0 != x_t): (1 - 2 x_t) f (float32)."""
  return jnp.where(x_t > 0, -flip_logits, flip_logits).astype(jnp.float32)


def check_bits(bits: jax.Array, seq_len: int, num_bits: int) -> None:
  if bits.ndim != 3 or tuple(bits.shape[1:]) != (seq_len, num_bits):
    raise ValueError(f"bits must be [B, {seq_len}, {num_bits}] (tokens of num_bits bits), got "
                     f"{tuple(bits.shape)}")


class BitModel(nnx.Module):
  """The shared shape of the bit-token generators: bits -> Linear -> trunk -> n logits per token,
  a class token in front (id C = the null class). `extra_tokens` learned slots follow the class
  token (the diffusion model's time token); `causal` picks the trunk's mask."""

  def __init__(self, *, num_bits: int, seq_len: int, num_classes: int = 0, width: int = 768,
               depth: int = 12, heads: int = 12, mlp_ratio: float = 4.0, class_dropout: float = 0.1,
               causal: bool = False, dtype=jnp.float32, remat="none", scan_layers: bool = False,
               attention_impl=None, rngs: nnx.Rngs):
    check_generator_args(num_classes=num_classes, class_dropout=class_dropout, num_bits=num_bits,
                         seq_len=seq_len)
    self.num_bits, self.seq_len, self.num_classes = num_bits, seq_len, num_classes
    self.class_dropout = class_dropout
    init = nnx.initializers.normal(0.02)
    self.bits_in = nnx.Linear(num_bits, width, kernel_init=logical_init(init, None, "embed"),
                              rngs=rngs)
    self.pos_embedding = nnx.Param(logical_init(init, None, "embed")(rngs.params(),
                                                                     (seq_len, width)))
    self.net = TokenTrunk(input_vocab=num_classes + 1, output_vocab=num_bits, width=width,
                          depth=depth, heads=heads, mlp_ratio=mlp_ratio, causal=causal, dtype=dtype,
                          remat=remat, scan_layers=scan_layers, attention_impl=attention_impl,
                          rngs=rngs)

  @property
  def null_id(self) -> int:
    return self.num_classes

  def condition_ids(self, labels, batch: int, *, train: bool = False, rng=None) -> jax.Array:
    """Class ids [B] int32 (labels < 0 or an unconditional model: the null id; class dropout when
    training)."""
    return class_condition(labels, batch, null_id=self.null_id, num_classes=self.num_classes,
                           class_dropout=self.class_dropout, train=train, rng=rng)

  def embed_bits(self, bits: jax.Array, start: int | jax.Array = 0) -> jax.Array:
    """Inputs [B, T, W] of bits [B, T, n] at token positions start..start+T-1."""
    pos = jax.lax.dynamic_slice_in_dim(self.pos_embedding.get_value(), start, bits.shape[1])
    return self.bits_in(bits.astype(jnp.float32)) + pos


class BinaryDiffusion(BitModel):
  """Bidirectional flip-logit model over [class, time, bits_1..bits_N]."""

  def __init__(self, *, width: int = 768, time_sampling: str = "uniform", rngs: nnx.Rngs, **kw):
    if time_sampling not in TIME_SAMPLING:
      raise ValueError(f"time_sampling must be one of {TIME_SAMPLING}, got {time_sampling!r}")
    super().__init__(width=width, causal=False, rngs=rngs, **kw)
    self.time_sampling = time_sampling
    self.time_in = nnx.Linear(width, width, kernel_init=logical_init(nnx.initializers.normal(0.02),
                                                                     None, "embed"), rngs=rngs)
    self.width = width

  def __call__(self, x_t: jax.Array, t: jax.Array, labels=None, *, train: bool = False,
               rng=None) -> jax.Array:
    """Flip logits [B, N, n] float32 for noisy bits x_t int [B, N, n] at times t [B] in [0, 1]."""
    check_bits(x_t, self.seq_len, self.num_bits)
    b = x_t.shape[0]
    cond = self.net.embed(self.condition_ids(labels, b, train=train, rng=rng))
    time = self.time_in(timestep_embedding(jnp.broadcast_to(t, (b,)), self.width))
    x = self.embed_bits(x_t)
    x = jnp.concatenate([cond[:, None].astype(x.dtype), time[:, None].astype(x.dtype), x], axis=1)
    return self.net.forward_embedded(x)[:, 2:]


def loss(model: BinaryDiffusion, tokens: jax.Array, labels, *, rng: jax.Array, train: bool = True,
         step=None):
  """Mean binary cross-entropy of the x_0 logits against the clean bits; metrics {loss, accuracy
  (of the thresholded x_0 prediction)}. `step` is unused."""
  del step
  r_t, r_x, r_drop = jax.random.split(rng, 3)
  b = tokens.shape[0]
  t = sample_times(r_t, b, model.time_sampling)
  x_t = corrupt(r_x, tokens, t)
  logits = x0_logits(model(x_t, t, labels, train=train, rng=r_drop), x_t)
  target = tokens.astype(jnp.float32)
  value = jnp.mean(bce_with_logits(logits, target))
  acc = jnp.mean(((logits > 0) == (tokens > 0)).astype(jnp.float32))
  return value, {"loss": value, "accuracy": acc}


def bce_with_logits(logits: jax.Array, target: jax.Array) -> jax.Array:
  """Elementwise binary cross-entropy -[y log s(l) + (1 - y) log(1 - s(l))], stable in l."""
  return jnp.maximum(logits, 0.0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def make_model(cfg: Mapping, *, rngs: nnx.Rngs) -> BinaryDiffusion:
  """A BinaryDiffusion from its constructor's fields plus `nn.options.COMMON` and `name`; any other
  key raises ValueError."""
  return BinaryDiffusion(**model_kwargs(cfg, DIFFUSION_FIELDS, model="binary_diffusion",
                                       cls=BitModel), rngs=rngs)


def generate(model: BinaryDiffusion, rng: jax.Array, labels: jax.Array, opts) -> jax.Array:
  """Bits int32 [B, N, n] for labels int32 [B] (`samplers.binary_diffusion.sample`; opts:
  `eval.generate.Options`: steps, temperature, cfg_scale s in the library's u + s (c - u)
  convention, i.e. Instella's (1 + w) c - w u with w = s - 1; guidance runs for a class-conditional
  model when s != 1; protocol: the release's protocol 1 or 2, `config.sampling.protocol`)."""
  from jaxtok.samplers import binary_diffusion as sampler  # pylint: disable=g-import-not-at-top
  b = labels.shape[0]
  guided = model.num_classes > 0 and float(opts.cfg_scale) != 1.0
  return sampler.sample(rng, lambda x, t, cond: model(x, t, cond), (b, model.seq_len, model.num_bits),
                        steps=opts.steps or 20, temperature=opts.temperature, cond=labels,
                        uncond=jnp.full_like(labels, -1) if guided else None,
                        cfg_scale=float(opts.cfg_scale) - 1.0 if guided else 0.0,
                        protocol=opts.protocol)
