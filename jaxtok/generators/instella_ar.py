"""Instella-T2I's released text-to-image binary autoregressive network (`Instella_AR_Model`).

sprintml/BitMark `Instella-T2I/models/ar_model.py` and `scripts/train_ar.py`, composed of the shared
parts (the same `InstellaLayer` as `generators/instella_diff.py`, without AdaLN):

  x      = [split; Linear(n, W)(bits_1..bits_M)]            (a learned split token, then M tokens)
  per block l: a pre-RMSNorm (with weight, eps 1e-6) `nn.Block`:
    h    = RMSNorm(x) + pos_l[:M + 1]                        (learned [N + 1, W])
    x    = x + attention, queries from h, keys/values over [proj_cond_l(features[l]); h], causal
           over the image tokens (bottom-right aligned: every query sees every unpadded text key)
    x    = x + FF(RMSNorm(x))                                (GELU-tanh, 4W, biases)
  logits = Linear(W, n)(RMSNorm(x))                          [B, M + 1, n]
Position i's logits are the n bits of token i (0-based), each bit its own Bernoulli.

Training (`loss`, the release's `train_ar.py`): teacher forcing with the input bits[:, :-1], BCE
with logits of all N tokens' bits, with the caption replaced by the caller's empty-prompt condition
with probability uncond_prob (see `instella_diff.drop_condition`).

Sampling (`sample`): the release's `BinaryAR.sample` recomputes the whole prefix at every token (no
KV cache). Here each layer's KV cache holds its projected text keys/values in slots 0..T-1 (computed
once, `InstellaLayer.text_cache`) and one `step` per token writes the new token's keys at slot
T + i (`nn.Block.extend` with the per-block position embedding); recompute=True runs the release's
way over a fixed-length input (tokens not yet drawn are zeros that the causal mask hides, so
position i equals the release's growing-prefix call). Both are tested equal to the release's
growing-prefix loop. Each token:
logits at its position, (1 + w) c - w u with the null condition as u, then
`generators.binary_ar.draw_bits` (temperature, the within-token bit bias `delta`, 0 = greedy). N
model calls of 2B rows with guidance. The release's loop draws range(64) bits (its n); here n.

Checked against the release: the network's outputs equal its (converted weights, tiny sizes) to
1e-4 (`tests/convert/test_instella_t2i.py`). The release's AR model also carries an unused
TimestepEmbedding (`time_embed.*`): the converter drops it. Not matched: initialisation (the release
keeps PyTorch's Linear defaults, normal(0, 0.02) for the split token, zeros for pos; here
trunc_normal(0.02) kernels, the same split token and pos).

Dimension names: B batch, N image tokens, M input tokens (<= N - 1), n bits, W width, L depth,
T text length, Dt text width.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.generators.binary_ar import draw_bits
from jaxtok.generators.binary_diffusion import bce_with_logits
from jaxtok.generators.instella_diff import (InstellaLayer, attention_mask, check_condition,
                                             check_sizes, drop_condition, guided_condition,
                                             run_layers)
from jaxtok.nn.dense import Dense
from jaxtok.nn.embeddings import trunc_normal
from jaxtok.nn.norm import Norm
from jaxtok.nn.options import model_kwargs
from jaxtok.samplers import _checks, guidance
from jaxtok.sharding import logical_init

FIELDS = ("num_bits", "seq_len", "text_dim", "width", "depth", "heads", "uncond_prob")


class InstellaAR(nnx.Module):
  """The release's `Instella_AR_Model` (module docstring); full size: num_bits 64, seq_len 128,
  text_dim 2048, width 2048, depth 16, heads 16."""

  def __init__(self, *, num_bits: int, seq_len: int, text_dim: int, width: int = 2048,
               depth: int = 16, heads: int = 16, uncond_prob: float = 0.1, dtype=jnp.float32,
               remat="none", scan_layers: bool = False, attention_impl=None, rngs: nnx.Rngs):
    check_sizes(num_bits=num_bits, seq_len=seq_len, text_dim=text_dim, width=width, depth=depth,
                heads=heads, uncond_prob=uncond_prob, scan_layers=scan_layers)
    self.num_bits, self.seq_len, self.text_dim, self.depth = num_bits, seq_len, text_dim, depth
    self.uncond_prob, self.remat = float(uncond_prob), remat
    init = trunc_normal(0.02)
    self.x_embed = Dense(num_bits, width, (None, "embed"), kernel_init=init, dtype=dtype, rngs=rngs)
    self.split = nnx.Param(logical_init(nnx.initializers.normal(0.02), "embed")(
        rngs.params(), (width,), jnp.float32))
    self.layers = nnx.List([InstellaLayer(width, heads, text_dim, seq_len + 1, adaln=False,
                                          dtype=dtype, attention_impl=attention_impl, rngs=rngs,
                                          init=init) for _ in range(depth)])
    self.norm_out = Norm(width, kind="rms", eps=1e-6, dtype=dtype, rngs=rngs)
    self.proj_out = Dense(width, num_bits, ("embed", None), kernel_init=init, dtype=dtype,
                          rngs=rngs)

  def __call__(self, bits: jax.Array, features: jax.Array, mask: jax.Array) -> jax.Array:
    """Logits float32 [B, M + 1, n] of tokens 0..M given the split token and bits [B, M, n]
    (M in 0..N-1; int or float in {0, 1}), features float32 [L, B, T, Dt], mask int [B, T]."""
    if bits.ndim != 3 or bits.shape[2] != self.num_bits or bits.shape[1] > self.seq_len - 1:
      raise ValueError(f"bits must be [B, M <= {self.seq_len - 1}, {self.num_bits}] (the tokens "
                       f"before the ones predicted), got {tuple(bits.shape)}")
    check_condition(features, mask, depth=self.depth, text_dim=self.text_dim)
    b, m = bits.shape[0], bits.shape[1] + 1
    x = self.x_embed(bits.astype(jnp.float32))
    split = jnp.broadcast_to(self.split.get_value().astype(x.dtype), (b, 1, x.shape[-1]))
    x = run_layers(self.layers, jnp.concatenate([split, x], axis=1), features,
                   attention_mask(mask, m, causal=True), remat=self.remat)
    return self.proj_out(self.norm_out(x)).astype(jnp.float32)

  def init_cache(self, features: jax.Array, mask: jax.Array, dtype=None):
    """(per-layer KVCaches [B, H, T + N, E] holding each layer's text keys/values in slots 0..T-1,
    slot mask bool [B, 1, 1, T + N]: the text mask, then ones) for `step`."""
    check_condition(features, mask, depth=self.depth, text_dim=self.text_dim)
    caches = tuple(layer.text_cache(features[l], self.seq_len, dtype)
                   for l, layer in enumerate(self.layers))
    slots = jnp.concatenate([mask != 0, jnp.ones((mask.shape[0], self.seq_len), bool)], axis=1)
    return caches, slots[:, None, None, :]

  def step(self, prev: jax.Array, position, caches, slot_mask: jax.Array):
    """Logits float32 [B, n] of token `position` (int32, may be traced) from the bits prev [B, n]
    of token position - 1 (ignored at position 0: the split token), writing that input's keys and
    values at slot T + position of every layer's cache. Returns (logits, caches)."""
    x = self.x_embed(prev[:, None].astype(jnp.float32))
    split = jnp.broadcast_to(self.split.get_value().astype(x.dtype), x.shape)
    x = jnp.where(position == 0, split, x)
    slot = slot_mask.shape[-1] - self.seq_len + position
    new = []
    for layer, cache in zip(self.layers, caches):
      x, cache = layer.extend(x, cache, slot, position, slot_mask)
      new.append(cache)
    return self.proj_out(self.norm_out(x))[:, 0].astype(jnp.float32), tuple(new)


def loss(model: InstellaAR, bits: jax.Array, features: jax.Array, mask: jax.Array, *,
         rng: jax.Array, null=None, train: bool = True):
  """(mean BCE of every bit given the earlier tokens and the text, {loss, accuracy}) as
  `scripts/train_ar.py`: input bits[:, :-1]. bits int [B, N, n]; features [L, B, T, Dt]; mask
  [B, T]; null: the empty prompt's condition for the text dropout (`instella_diff.loss`)."""
  if bits.ndim != 3 or tuple(bits.shape[1:]) != (model.seq_len, model.num_bits):
    raise ValueError(f"bits must be [B, {model.seq_len}, {model.num_bits}], got "
                     f"{tuple(bits.shape)}")
  if train and model.uncond_prob > 0:
    features, mask = drop_condition(rng, features, mask, null, model.uncond_prob)
  logits = model(bits[:, :-1], features, mask)
  value = jnp.mean(bce_with_logits(logits, bits.astype(jnp.float32)))
  acc = jnp.mean(((logits > 0) == (bits > 0)).astype(jnp.float32))
  return value, {"loss": value, "accuracy": acc}


def sample(rng: jax.Array, model: InstellaAR, features: jax.Array, mask: jax.Array, *,
           null=None, temperature: float = 1.0, cfg_scale: float = 0.0,
           delta: float = 0.0, recompute: bool = False) -> jax.Array:
  """Bits int32 [B, N, n] for the text condition (features [L, B, T, Dt], mask [B, T]).

  null: the empty prompt's (features [L, 1 or B, T, Dt], mask [1 or B, T]) for guidance;
  cfg_scale: w of (1 + w) c - w u (0 = unguided, null optional); temperature (0 = greedy) and
  delta: `binary_ar.draw_bits`. One `lax.fori_loop` over the N tokens: one cached `step` each
  (text keys/values computed once), or with recompute=True the release's full recompute.
  """
  _checks.temperature(temperature)
  if isinstance(delta, bool) or not isinstance(delta, (int, float)):
    raise TypeError(f"delta must be a real number, got {type(delta).__name__} ({delta!r})")
  check_condition(features, mask, depth=model.depth, text_dim=model.text_dim)
  cond, uncond = guided_condition(features, mask, null, cfg_scale)
  guided = uncond is not None
  b, n = mask.shape[0], model.seq_len
  feats, m = guidance.concat_batch(cond, uncond) if guided else cond
  feats = jnp.moveaxis(feats, 1, 0)
  keys = jax.random.split(rng, n)

  def draw(i, logits):
    if guided:
      logits = guidance.cfg_instella(logits[:b], logits[b:], cfg_scale)
    return draw_bits(keys[i], logits, temperature=temperature, delta=delta)

  out = jnp.zeros((b, n, model.num_bits), jnp.int32)
  if not recompute:
    caches, slot_mask = model.init_cache(feats, m)

    def cached(i, carry):
      out, prev, caches = carry
      logits, caches = model.step(jnp.concatenate([prev, prev]) if guided else prev, i, caches,
                                  slot_mask)
      bits = draw(i, logits)
      return out.at[:, i].set(bits), bits, caches

    return jax.lax.fori_loop(0, n, cached, (out, out[:, 0], caches))[0]

  def body(i, out):
    inp = out[:, :n - 1]
    logits = jax.lax.dynamic_index_in_dim(
        model(jnp.concatenate([inp, inp]) if guided else inp, feats, m), i, axis=1,
        keepdims=False)
    return out.at[:, i].set(draw(i, logits))

  return jax.lax.fori_loop(0, n, body, out)


def make_model(cfg: Mapping, *, rngs: nnx.Rngs) -> InstellaAR:
  """An InstellaAR from its constructor's fields plus `nn.options.COMMON` and `name`; any other key
  raises ValueError."""
  return InstellaAR(**model_kwargs(cfg, FIELDS, model="instella_ar", extra=("name", "text"),
                                 cls=InstellaAR), rngs=rngs)
