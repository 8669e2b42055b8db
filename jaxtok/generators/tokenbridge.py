"""TokenBridge: MAR's masked bidirectional backbone over dimension-wise quantized tokens, with a
channel-autoregressive categorical head (Wang et al. 2025, "Bridging Continuous and Discrete Tokens
for Autoregressive Visual Generation").

Data: the float VAE token datasets MAR trains on (tokens float [B, N, D]); every batch is quantized
on the fly, each channel on its own, by `quantizers.dimwise` with TokenBridge's fixed Gaussian bins
(`dimwise.standard_normal(D, bits, std_range, value_range)`: L = 2**bits levels per channel, latents
in [-value_range, value_range] mapped onto [-std_range, std_range] standard units). The backbone reads
the dequantized latents (the values the indices stand for), so its inputs are exactly what
generation feeds it; the head predicts the indices.

Model: `MAR`'s trunk (linear token embedding, mask embedding, class token, bidirectional
`TokenTrunk`) gives a condition z [B, N, W] per position; `heads.DimwiseARHead(adaln=True)` turns z
into D indices one channel after another (its docstring describes the release's head).

Channel order (`channel_order`, a permutation of range(D), the head's AR order; None = index order;
step k predicts channel channel_order[k], as the release's `quant_indices[..., channel_order]`).
The release hard-codes `RELEASE_CHANNEL_ORDER` for MAR's KL-16 VAE latents and ships no code that
derives it; it fits only those latents. For other tokenizers `frequency_order` computes one from a
sample of training tokens: each channel's sequence over the N token positions (a 2D grid h x w
when `grid` is given) is Fourier transformed (rfft / rfft2, mean removed); its low-frequency energy
ratio is the share of the spectral energy at normalised radial frequency <= `cutoff` (default 0.25
of Nyquist), averaged over samples; channels are sorted by decreasing ratio (ties by index). This
criterion is our reading of the paper's "frequency-ordered channels", not the release's.

Training: MAR's truncated-normal mask ratio on [0.7, 1]; cross-entropy of the head on masked
positions, a mean over (masked positions x channels) as the release's F.cross_entropy.
Generation (`sample_head`, used by `eval.generate`): `jaxtok.samplers.mar.sample`'s random-order
cosine loop; classifier-free guidance combines the backbone FEATURES, z = u + s (c - u), and the
head samples once from z (the release's `sample_tokens`), at MAR's linear scale with the last
iteration counting one token as masked (`cfg_min_masked=1`: the release clamps mask_len >= 1).
One temperature for every channel, as the release; top-k / top-p are extensions (default off).

Checked against the release (YuqingWang1029/TokenBridge `models/tokenbridge.py`,
`main_tokenbridge.py`, `engine_tokenbridge.py`):
  agrees  quantization (`quantizers.dimwise.standard_normal`): 2**quant_bits levels (6 bits
          default), latents (VAE sample x 0.2325) in [quant_min, quant_max] = [-5, 5] mapped
          linearly onto [-3, 3] std units, clamped, Phi^-1(linspace(0, 1, L + 1)) clamped to +-3,
          truncated-normal bin means, nearest-mean assignment; the backbone reads dequantized values.
  agrees  mask ratio ~ truncnorm on [0.7, 1] (mean 1, std 0.25); class dropout 0.1; random order
          and cosine count schedule at sampling; linear CFG 1 + (g - 1)(N - mask_len) / N.
  fixed   head conditioning: the release modulates with the projected condition plus a per-step
          embedding in the head's width (we modulated with raw z); it has no start vector; it adds
          an affine LayerNorm before the modulated final norm; its attention has qkv bias and an
          affine LayerNorm qk-norm. Released head sizes: width 1024, 8 heads, depth 4 (large) / 6
          (huge) (configs now match).
  fixed   guidance on backbone features, not per-channel logits; last-step guidance scale.
  differs the mask ratio is drawn per sample and rounded (`mar.training_mask`, shared with MAR);
          the release draws one ratio per batch and takes ceil(N r).
  differs the backbone is jaxtok's single bidirectional `TokenTrunk` (MAR's), not the release's
          MAE encoder/decoder (16 + 16 blocks for large) with a 64-slot class buffer; no dropout
          (the release uses 0.1 attention/projection dropout in backbone and head).
  differs the release's sampling path adds timesteps_embeddings[0] to the head's first input,
          which its training path does not; we follow training (see `DimwiseARHead`).

Dimension names: B batch, N tokens, D channels, L levels (2**bits), W width.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok.generators import mar
from jaxtok.generators.heads import DimwiseARHead
from jaxtok.nn.options import model_kwargs
from jaxtok.quantizers import dimwise
from jaxtok.samplers import guidance

FIELDS = ("token_dim", "seq_len", "num_classes", "width", "depth", "heads", "head_width",
          "head_depth", "head_heads", "bits", "std_range", "value_range", "channel_order",
          "class_dropout")


def frequency_order(tokens, *, grid: tuple[int, int] | None = None, cutoff: float = 0.25) -> tuple[int, ...]:
  """Channels sorted by decreasing low-frequency energy ratio (see the module docstring).

  Args:
    tokens: float [B, N, D] training tokens (host or device array).
    grid: (h, w) with h * w = N to read the positions as a 2D grid (rfft2); None: 1D (rfft over N).
    cutoff: normalised frequency in (0, 1] (1 = Nyquist) bounding the low band.

  Returns:
    A permutation of range(D) (Python ints): the head's channel order.
  """
  x = np.asarray(tokens, np.float64)
  if x.ndim != 3 or min(x.shape) < 1:
    raise ValueError(f"tokens must be [B, N, D] with all sizes >= 1, got shape {x.shape}")
  if not 0.0 < cutoff <= 1.0:
    raise ValueError(f"cutoff must be in (0, 1], got {cutoff}")
  b, n, d = x.shape
  x = x - x.mean(axis=1, keepdims=True)  # the DC term says nothing about smoothness
  if grid is None:
    power = np.abs(np.fft.rfft(x, axis=1)) ** 2  # [B, F, D]
    radius = np.fft.rfftfreq(n) / 0.5
  else:
    h, w = (int(v) for v in grid)
    if h * w != n:
      raise ValueError(f"grid {grid} must multiply to the {n} token positions")
    power = np.abs(np.fft.rfft2(x.reshape(b, h, w, d), axes=(1, 2))) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(h) / 0.5, np.fft.rfftfreq(w) / 0.5, indexing="ij")
    radius = np.sqrt((fy ** 2 + fx ** 2) / 2.0)  # 1 at the (Nyquist, Nyquist) corner
    power = power.reshape(b, -1, d)
    radius = radius.reshape(-1)
  low = (radius <= cutoff)[None, :, None]
  total = power.sum(axis=1)
  ratio = np.where(total > 0, (power * low).sum(axis=1) / np.maximum(total, 1e-300), 1.0).mean(0)
  return tuple(int(i) for i in np.lexsort((np.arange(d), -ratio)))


# The release's order of MAR's KL-16 VAE channels (`TokenBridge.channel_order`): step k of the
# channel AR predicts channel RELEASE_CHANNEL_ORDER[k]. Valid only for those 16-channel latents.
RELEASE_CHANNEL_ORDER = (8, 1, 10, 9, 6, 12, 4, 0, 3, 11, 7, 14, 2, 15, 13, 5)


class DimwiseLevels:
  """Dimension-wise quantization of a model's float tokens with fixed Gaussian bins; needs the
  attributes token_dim (set by the model) and bits, std_range, value_range (`init_levels`);
  used by TokenBridge and CubiD."""

  def init_levels(self, token_dim: int, bits: int, std_range: float, value_range: float) -> None:
    """Checks the bins' settings (`dimwise.standard_normal`'s errors) and stores them."""
    dimwise.standard_normal(max(int(token_dim), 1), bits=bits, std_range=std_range,
                            value_range=value_range)
    self.bits, self.std_range, self.value_range = int(bits), float(std_range), float(value_range)

  @property
  def levels(self) -> int:
    return 2 ** self.bits

  def spec(self) -> dimwise.DimwiseSpec:
    """The fixed Gaussian bins (built from the static fields, so they need no checkpointing)."""
    return dimwise.standard_normal(self.token_dim, bits=self.bits, std_range=self.std_range,
                                   value_range=self.value_range)

  def quantize(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(indices int32 [B, N, D], dequantized latents float32 [B, N, D]) of float tokens."""
    out = dimwise.quantize(tokens.astype(jnp.float32), self.spec())
    return out.indices, jax.lax.stop_gradient(out.codes).astype(jnp.float32)

  def dequantize(self, indices: jax.Array) -> jax.Array:
    """Latents float32 [..., D] of indices int [..., D]."""
    return dimwise.indices_to_codes(indices, self.spec())


class TokenBridge(mar.MAR, DimwiseLevels):
  """MAR backbone (conditions z) + DimwiseARHead (adaLN) over dimension-wise quantized tokens."""

  def __init__(self, *, token_dim: int, seq_len: int, num_classes: int = 0, width: int = 768,
               depth: int = 12, heads: int = 12, head_width: int = 1024, head_depth: int = 3,
               head_heads: int = 8, bits: int = 6, std_range: float = 3.0, value_range: float = 5.0,
               channel_order: Sequence[int] | None = None, class_dropout: float = 0.1,
               dtype=jnp.float32, remat="none", scan_layers: bool = False, attention_impl=None,
               rngs: nnx.Rngs):
    self.init_levels(token_dim, bits, std_range, value_range)  # before the head is made
    self.head_heads = head_heads
    self.channel_order = None if channel_order is None else tuple(int(c) for c in channel_order)
    super().__init__(token_dim=token_dim, seq_len=seq_len, num_classes=num_classes, width=width,
                     depth=depth, heads=heads, head_width=head_width, head_depth=head_depth,
                     class_dropout=class_dropout, dtype=dtype, remat=remat, scan_layers=scan_layers,
                     attention_impl=attention_impl, rngs=rngs)

  def make_head(self, *, token_dim, cond_dim, width, depth, rngs):
    return DimwiseARHead(num_channels=token_dim, levels=self.levels, cond_dim=cond_dim, width=width,
                         depth=depth, heads=self.head_heads, order=self.channel_order, adaln=True,
                         rngs=rngs)


def sample_head(model: TokenBridge, key: jax.Array, zc: jax.Array, zu: jax.Array | None, scale,
                *, temperature: float = 1.0, top_k=None, top_p=None) -> jax.Array:
  """New latents float32 [M, D] (dequantized) for backbone features zc [M, W] (and zu [M, W]).

  With zu the features are guided first, z = u + s (c - u) (s = scale, may be traced), and the
  head samples once from z, as the release does; zu None samples from zc. The mar loop's
  `head_sampler`.
  """
  z = zc if zu is None else guidance.cfg_uncond_base(zc, zu, scale)
  idx = model.head.sample(key, z, temperature=temperature, top_k=top_k, top_p=top_p)
  return model.dequantize(idx)


def loss(model: TokenBridge, tokens: jax.Array, labels, *, rng: jax.Array, train: bool = True,
         step=None):
  """Masked-position channel cross-entropy and metrics {loss, mask_ratio, channel_accuracy}.

  tokens: float [B, N, D] latents (quantized here). `step` does not change the objective.
  """
  del step
  if tokens.ndim != 3 or not jnp.issubdtype(tokens.dtype, jnp.floating):
    raise ValueError(f"tokenbridge trains on float VAE tokens [B, N, D], got {tokens.dtype} "
                     f"{tuple(tokens.shape)}")
  r_mask, r_drop = jax.random.split(rng)
  b, n, d = tokens.shape
  indices, codes = model.quantize(tokens)
  mask = mar.training_mask(r_mask, b, n)
  z = model.condition(codes, mask, labels, train=train, rng=r_drop)
  logits = model.head(z.reshape(b * n, -1), indices.reshape(b * n, d))  # [BN, D, L]
  target = indices.reshape(b * n, d, 1)
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), target, -1)[..., 0].mean(-1)
  w = mask.reshape(-1).astype(jnp.float32)
  value = jnp.sum(ce * w) / jnp.maximum(w.sum(), 1.0)
  hit = (jnp.argmax(logits, -1) == target[..., 0]).mean(-1)
  return value, {"loss": value, "mask_ratio": mask.mean(),
                 "channel_accuracy": jnp.sum(hit * w) / jnp.maximum(w.sum(), 1.0)}


def make_model(cfg: Mapping, *, rngs: nnx.Rngs) -> TokenBridge:
  """A TokenBridge from its constructor's fields plus `nn.options.COMMON` and `name`; any other key
  raises ValueError."""
  return TokenBridge(**model_kwargs(cfg, FIELDS, model="tokenbridge", cls=TokenBridge), rngs=rngs)
