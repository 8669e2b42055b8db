"""D-AR (Gao & Shou 2025, "D-AR: Diffusion via Autoregressive Models", showlab/D-AR): a 1D tokenizer
whose tokens, in order, condition successive segments of a pixel-space flow decoder.

K tokens form G groups of K/G. The flow runs over T denoising steps on times t_i = i / T (t = 0
noise, t = 1 data, as `samplers.flow`), shifted by `time_shift` (t / (t + shift (1 - t)), the
release's `adjust_schedule`, = `flow.time_at`); step i is conditioned on group
g(i) = min(floor(t_i G + 1/2), G - 1) (the release's rounding of the unshifted time to a group),
so the groups cover consecutive segments of the trajectory, coarse (noisy) to fine. Next-token AR
over the tokens (jaxtok.generators.gpt, unchanged) thus mirrors the diffusion: each new group
unlocks the next segment of denoising.

Parts (all shared `nn` parts):
  encoder   patch embeddings + K learned queries through a `Stack` whose mask lets patches see
            patches and query k see every patch and queries <= k (the release's mask), then a
            Dense to the FSQ dimensions and `quantizers.fsq` (the release uses an l2-normalised VQ;
            FSQ keeps this module free of codebook state);
  token decoder  the codes' causal transformer (`Stack`, causal) -> per-token conditions; causal,
            so a group's conditions depend only on tokens up to that group (prefix-consistent);
  velocity  the release's `DiffusionCore` of SiT blocks over the patches of x_t: each block
            (`nn.Block(cross="ada", context_mlp="silu")`) cross-attends from the normalised
            patches to the active group's conditions (context = LayerNorm(Dense(conditions)),
            mapped per block by LayerNorm(Linear-SiLU-Linear)), adds that output to the time
            embedding, and AdaLN-modulates its self-attention and SiLU MLP with the sum, per patch;
            LayerNorm without affine (eps 1e-6), qk LayerNorm, 2D RoPE on the patch grid (the
            cross-attention rotates only its queries); LayerNorm and a zero-initialised linear
            patch head (the released config's mlp_head=false).
  Left as before (not the release): the encoder and token decoder blocks have no zero-initialised
  branch gates, qk-norm or SiLU MLP; one time embedding serves all decoder blocks (the release
  gives each block its own); no REPA branch.
Decoding any prefix of g' groups runs the same trajectory: steps of groups < g' are those of the
full decode, and the remaining steps reuse the last available group ("finishing the trajectory
with the tokens available"); `previews` returns the image after each group from one shared run.

Training (`train_forward`): per image t ~ U(0, 1), its group g(t), shifted time t', x_t = t' x +
(1 - t') n, and the mean squared error of the velocity against x - n (the release's loss; pixels
in [-1, 1]). There are no pixel losses (the decoder samples): the flow loss is in `losses`.

Dimension names: B batch, S image side, K tokens, G groups, T steps, P patches, D code dimension.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok.nn.block import Block
from jaxtok.nn.dense import Dense
from jaxtok.nn.embeddings import sincos_2d, timestep_embedding
from jaxtok.nn.norm import Norm
from jaxtok.nn.options import model_kwargs
from jaxtok.nn.rope import grid_positions
from jaxtok.nn.stack import Stack
from jaxtok.nn.vit import patchify, unpatchify
from jaxtok.quantizers import base, fsq
from jaxtok.samplers import flow
from jaxtok.sharding import logical_init
from jaxtok.tokenizers.api import EncodeOutput, TrainOutput, check_images, check_num_tokens, check_target

_INIT = nnx.initializers.normal(0.02)
_XAVIER = nnx.initializers.xavier_uniform()
_ZEROS = nnx.initializers.zeros


# ---- the segment / group schedule (pure, host-side)

def group_at(t, num_groups: int):
  """Group of unshifted time(s) t in [0, 1]: min(floor(t G + 1/2), G - 1) (numpy or jax)."""
  xp = jnp if isinstance(t, jax.Array) else np
  return xp.minimum(xp.floor(xp.asarray(t) * num_groups + 0.5), num_groups - 1).astype(xp.int32)


def step_groups(num_steps: int, num_groups: int) -> np.ndarray:
  """int32 [T]: the group conditioning each denoising step i (t_i = i / T)."""
  return group_at(np.arange(num_steps) / num_steps, num_groups)


def segment_ends(num_steps: int, num_groups: int) -> np.ndarray:
  """int [G]: the number of steps done when group g's segment ends (its last step + 1)."""
  groups = step_groups(num_steps, num_groups)
  return np.array([int(np.max(np.nonzero(groups <= g)[0], initial=-1)) + 1
                   for g in range(num_groups)])


def check_schedule(num_tokens: int, num_groups: int, num_steps: int) -> None:
  """ValueError unless G divides K and every group owns at least one of the T steps."""
  if num_groups < 1 or num_tokens % num_groups:
    raise ValueError(f"num_groups must divide num_tokens={num_tokens}, got {num_groups}")
  seen = set(step_groups(num_steps, num_groups).tolist())
  if seen != set(range(num_groups)):
    raise ValueError(f"num_steps={num_steps} leaves group(s) {sorted(set(range(num_groups)) - seen)} "
                     f"of num_groups={num_groups} without a denoising step; use num_steps >= "
                     f"2 * num_groups")


def encoder_mask(num_patches: int, num_tokens: int) -> np.ndarray:
  """bool [P + K, P + K]: patches see patches; query k sees all patches and queries <= k."""
  n = num_patches + num_tokens
  m = np.tril(np.ones((n, n), bool))
  m[:, :num_patches] = True
  return m


class Trajectory(NamedTuple):
  final: jax.Array      # float32 [B, S, S, 3] in [-1, 1] units: x after all T steps
  segment_end: jax.Array  # float32 [G', B, S, S, 3]: x at the end of each available group's segment


class DAR(nnx.Module):
  """Encoder + FSQ + causal token decoder + group-conditioned velocity network."""

  def __init__(self, *, image_size: int = 256, patch_size: int = 16, enc_width: int = 768,
               enc_depth: int = 12, token_width: int = 768, token_depth: int = 4,
               dec_width: int = 768, dec_depth: int = 12, head_dim: int = 64,
               mlp_ratio: float = 4.0, num_tokens: int = 256, num_groups: int = 8,
               num_steps: int = 25, fsq_levels: Sequence[int] = (8, 8, 8, 5, 5, 5),
               time_shift: float = 1.0, dtype=jnp.float32, remat="none", scan_layers: bool = False,
               attention_impl=None, rngs: nnx.Rngs):
    if image_size % patch_size:
      raise ValueError(f"patch_size must divide image_size={image_size}, got {patch_size}")
    check_schedule(num_tokens, num_groups, num_steps)
    if time_shift <= 0:
      raise ValueError(f"time_shift must be > 0, got {time_shift}")
    self.image_size, self.patch_size = image_size, patch_size
    self.grid = image_size // patch_size
    self.num_patches = self.grid * self.grid
    self.num_tokens, self.num_groups, self.num_steps = num_tokens, num_groups, num_steps
    self.group_size = num_tokens // num_groups
    self.fsq_levels = tuple(int(v) for v in fsq_levels)
    self.time_shift, self.dtype = float(time_shift), dtype
    patch_dim = 3 * patch_size * patch_size
    code_dim = len(self.fsq_levels)
    kw = dict(dtype=dtype, rngs=rngs)
    dense = lambda i, o, names, init=_XAVIER: Dense(i, o, names, kernel_init=init, **kw)

    def stack(width, depth, **velocity):
      block = lambda r: Block(width, max(1, width // head_dim), mlp_hidden=int(mlp_ratio * width),
                              norm_eps=1e-6, implementation=attention_impl, dtype=dtype, rngs=r,
                              **velocity)
      return Stack(depth, block, scan_layers=scan_layers, remat=remat, rngs=rngs)

    # Encoder.
    self.enc_patch = dense(patch_dim, enc_width, ("patch", "embed"))
    self.queries = nnx.Param(logical_init(_INIT, None, "embed")(rngs.params(), (num_tokens, enc_width)))
    self.encoder = stack(enc_width, enc_depth)
    self.enc_norm = Norm(enc_width, kind="layer", eps=1e-6, affine=False, dtype=dtype, rngs=rngs)
    self.enc_head = dense(enc_width, code_dim, ("embed", None))
    # Token decoder (causal over tokens).
    self.tok_in = dense(code_dim, token_width, (None, "embed"))
    self.tok_pos = nnx.Param(logical_init(_INIT, None, "embed")(rngs.params(), (num_tokens, token_width)))
    self.tok_stack = stack(token_width, token_depth)
    self.tok_norm = Norm(token_width, kind="layer", eps=1e-6, affine=False, dtype=dtype, rngs=rngs)
    # Velocity network (the release's DiffusionCore + SiTBlocks).
    self.cond_in = dense(token_width, dec_width, ("mlp", "embed"))
    self.dec_patch = dense(patch_dim, dec_width, ("patch", "embed"))
    self.time_fc1 = dense(dec_width, dec_width, (None, "embed"))
    self.time_fc2 = dense(dec_width, dec_width, ("mlp", "embed"))
    self.decoder = stack(dec_width, dec_depth, adaln=True, cross="ada", context_mlp="silu",
                         mlp="silu", norm_affine=False, qk_norm="layer", qk_norm_affine=True,
                         qk_norm_bias=True, qk_norm_eps=1e-6, rope="2d")
    self.dec_norm = Norm(dec_width, kind="layer", eps=1e-6, affine=False, dtype=dtype, rngs=rngs)
    self.dec_head = dense(dec_width, patch_dim, ("embed", "patch"), _ZEROS)

  # ---- pieces

  def encode_latents(self, images: jax.Array) -> jax.Array:
    """images [B, S, S, 3] in [0, 1] -> pre-quantization float32 [B, K, D]."""
    x = self.enc_patch(patchify((images.astype(jnp.float32) * 2 - 1).astype(self.dtype), self.patch_size))
    x = x + sincos_2d(self.grid, self.grid, x.shape[-1]).astype(x.dtype)
    q = jnp.broadcast_to(self.queries.get_value().astype(x.dtype), (x.shape[0],) + self.queries.shape)
    x = self.encoder(jnp.concatenate([x, q], axis=1),
                     mask=jnp.asarray(encoder_mask(self.num_patches, self.num_tokens)))
    return self.enc_head(self.enc_norm(x[:, self.num_patches:])).astype(jnp.float32)

  def token_conditions(self, codes: jax.Array) -> jax.Array:
    """Per-token conditions float [B, K', Wt] of codes [B, K', D] (causal: a prefix of codes gives
    the same leading conditions)."""
    k = codes.shape[1]
    x = self.tok_in(codes.astype(self.dtype)) + self.tok_pos.get_value()[:k].astype(self.dtype)
    return self.tok_norm(self.tok_stack(x, causal=True))

  def velocity(self, x_t: jax.Array, t: jax.Array, group_cond: jax.Array) -> jax.Array:
    """Velocity float32 [B, S, S, 3] (per unit of t, toward the data) of x_t [B, S, S, 3] at
    shifted times t [B], conditioned on one group's conditions group_cond [B, K/G, Wt]."""
    p = self.dec_patch(patchify(x_t.astype(self.dtype), self.patch_size))
    c = self.dec_norm(self.cond_in(group_cond.astype(self.dtype)))
    temb = self.time_fc2(jax.nn.silu(self.time_fc1(timestep_embedding(t, p.shape[-1]).astype(self.dtype))))
    x = self.decoder(p, cond=temb, context=c, positions=grid_positions(self.grid, self.grid))
    out = self.dec_head(self.dec_norm(x))
    return unpatchify(out.astype(jnp.float32), self.patch_size, self.grid, self.grid)

  def _groups(self, conds: jax.Array) -> jax.Array:
    """conds [B, g' K/G, Wt] -> [g', B, K/G, Wt]."""
    b = conds.shape[0]
    return conds.reshape(b, -1, self.group_size, conds.shape[-1]).transpose(1, 0, 2, 3)

  def denoise(self, conds: jax.Array, noise: jax.Array, *, method: str = "euler") -> Trajectory:
    """Runs the T-step trajectory from noise [B, S, S, 3] (t = 0) with the conditions of g' groups
    conds [B, g' K/G, Wt]: step i uses group min(g(i), g' - 1). One `lax.scan` over the steps.

    method: "euler" or "adams2" (the release's default: 2nd-order Adams-Bashforth, Euler first).
    """
    if method not in ("euler", "adams2"):
      raise ValueError(f"method must be 'euler' or 'adams2', got {method!r}")
    groups = self._groups(conds)
    available = groups.shape[0]
    steps = self.num_steps
    t = flow.timesteps(steps, self.time_shift)
    gid = np.minimum(step_groups(steps, self.num_groups), available - 1)
    ends = segment_ends(steps, self.num_groups)[:available]
    b = noise.shape[0]

    def body(carry, xs):
      x, v_prev, first = carry
      t0, t1, g = xs
      v = self.velocity(x, jnp.full((b,), t0), groups[g])
      step = v if method == "euler" else jnp.where(first, v, 1.5 * v - 0.5 * v_prev)
      x = x + (t1 - t0) * step
      return (x, v, jnp.zeros((), bool)), x

    x0 = jnp.asarray(noise, jnp.float32)
    init = (x0, jnp.zeros_like(x0), jnp.ones((), bool))
    (final, _, _), states = jax.lax.scan(body, init, (t[:-1], t[1:], jnp.asarray(gid)))
    # states[i] is x after step i: the segment of group g ends after step ends[g] - 1.
    return Trajectory(final, states[jnp.asarray(ends - 1)])

  def _noise(self, b: int, rng, noise):
    shape = (b, self.image_size, self.image_size, 3)
    if noise is None:
      return jax.random.normal(jax.random.key(0) if rng is None else rng, shape, jnp.float32)
    base.check_float_array("noise", noise)
    if tuple(noise.shape) != shape:
      raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
    return jnp.asarray(noise, jnp.float32)

  def _conds_of_tokens(self, tokens: jax.Array) -> jax.Array:
    base.check_int_array("tokens", tokens)
    if tokens.ndim != 2 or not 1 <= tokens.shape[1] <= self.num_tokens or tokens.shape[1] % self.group_size:
      raise ValueError(f"tokens must be [B, K'] with K' a multiple of the group size "
                       f"{self.group_size} in [1, {self.num_tokens}] (whole groups), got shape "
                       f"{tuple(tokens.shape)}")
    return self.token_conditions(fsq.indices_to_codes(tokens, self.fsq_levels))

  # ---- the tokenizer contract

  def encode(self, images: jax.Array, *, num_tokens: int | None = None, rng: jax.Array | None = None,
             train: bool = False) -> EncodeOutput:
    """images float [B, S, S, 3] in [0, 1] -> EncodeOutput(tokens int32 [B, K'], codes float
    [B, K', D], losses {} (FSQ), metrics). K' = num_tokens (default K); a query sees only earlier
    queries, so the first K' tokens do not depend on K'. rng is unused (deterministic)."""
    del rng
    check_images(images, self.image_size)
    k = check_num_tokens(num_tokens, self.num_tokens) or self.num_tokens
    q = fsq.quantize(self.encode_latents(images)[:, :k], self.fsq_levels, train=train)
    return EncodeOutput(tokens=q.indices, codes=q.codes, losses=dict(q.losses), metrics=q.metrics)

  def decode(self, tokens: jax.Array, *, rng: jax.Array | None = None, method: str = "euler",
             noise: jax.Array | None = None, train: bool = False) -> jax.Array:
    """tokens int [B, K'] (whole groups, a prefix of K) -> images float32 [B, S, S, 3] in [0, 1].

    Noise from `rng` (None: key 0: deterministic) or `noise` [B, S, S, 3]; fewer groups than G
    finish the trajectory with the last group (a preview)."""
    del train
    conds = self._conds_of_tokens(tokens)
    out = self.denoise(conds, self._noise(tokens.shape[0], rng, noise), method=method)
    return jnp.clip((out.final + 1.0) * 0.5, 0.0, 1.0)

  def train_forward(self, images: jax.Array, *, rng: jax.Array, step=None, target: str = "pixels",
                    perturb: dict | None = None, num_tokens: int | None = None) -> TrainOutput:
    """The flow loss of one noisy pass: TrainOutput(recon=None, losses={"flow", FSQ's}, metrics).
    `step` does not change the objective; `perturb` and `num_tokens` are refused (D-AR trains on
    all tokens; its prefixes are the trajectory's segments)."""
    del step
    check_target(target, proxy_head=False, model="D-AR")
    if perturb is not None or num_tokens not in (None, self.num_tokens):
      raise ValueError(f"D-AR trains on all {self.num_tokens} tokens without perturbation, got "
                       f"perturb={perturb!r}, num_tokens={num_tokens!r}")
    if rng is None:
      raise ValueError("rng must be a PRNG key for train_forward, got None")
    check_images(images, self.image_size)
    b = images.shape[0]
    r_t, r_n = jax.random.split(rng)
    q = fsq.quantize(self.encode_latents(images), self.fsq_levels, train=True)
    groups = self._groups(self.token_conditions(q.codes))       # [G, B, K/G, Wt]
    u = jax.random.uniform(r_t, (b,))
    g = group_at(u, self.num_groups)
    cond = groups[g, jnp.arange(b)]
    t = u / (u + self.time_shift * (1.0 - u))
    x1 = images.astype(jnp.float32) * 2.0 - 1.0
    n = jax.random.normal(r_n, x1.shape, jnp.float32)
    tb = t[:, None, None, None]
    v = self.velocity(tb * x1 + (1.0 - tb) * n, t, cond)
    loss = jnp.mean(jnp.square(v - (x1 - n)))
    metrics = dict(q.metrics, t=jnp.mean(t), group=jnp.mean(g.astype(jnp.float32)))
    return TrainOutput(recon=None, losses={"flow": loss, **q.losses}, metrics=metrics)


def previews(model: DAR, tokens: jax.Array, noise: jax.Array) -> jax.Array:
  """Streaming previews float32 [G', B, S, S, 3] in [0, 1] of tokens [B, g' K/G] (whole groups),
  Euler: preview g is the image decoded from groups 0..g alone, computed as the shared trajectory
  up to the end of segment g finished with group g's conditions (so preview g equals
  `decode(tokens[:, :(g + 1) K/G], noise=noise)`, and the last one the full decode)."""
  conds = model._conds_of_tokens(tokens)
  shared = model.denoise(conds, noise)
  steps = model.num_steps
  t = flow.timesteps(steps, model.time_shift)
  ends = segment_ends(steps, model.num_groups)
  groups = model._groups(conds)
  b = tokens.shape[0]
  out = []
  for g in range(groups.shape[0]):
    x = shared.segment_end[g]
    def body(x, xs, g=g):
      t0, t1 = xs
      return x + (t1 - t0) * model.velocity(x, jnp.full((b,), t0), groups[g]), None
    x, _ = jax.lax.scan(body, x, (t[ends[g]:-1], t[ends[g] + 1:]))
    out.append(jnp.clip((x + 1.0) * 0.5, 0.0, 1.0))
  return jnp.stack(out)


def preview_fn(tokenizer):
  """A jitted fn(params, tokens int [B, g' K/G], rng) -> `previews` float32 [G', B, S, S, 3] for a
  Tokenizer built from a D-AR config, from the noise the facade's `decode(params, tokens, rng)`
  draws (so the last preview is that decode; the facade's decode returns one image only)."""
  graphdef = tokenizer.graphdef

  @jax.jit
  def fn(params, tokens, rng):
    model = nnx.merge(graphdef, params)
    return previews(model, tokens, model._noise(tokens.shape[0], rng, None))  # pylint: disable=protected-access

  return fn


_FIELDS = ("image_size", "patch_size", "enc_width", "enc_depth", "token_width", "token_depth",
           "dec_width", "dec_depth", "head_dim", "mlp_ratio", "num_tokens", "num_groups",
           "num_steps", "fsq_levels", "time_shift")


def make_model(cfg: Mapping[str, Any], *, rngs: nnx.Rngs) -> DAR:
  """A DAR from its constructor's fields plus `nn.options.COMMON` and `name`; any other key raises
  ValueError."""
  return DAR(**model_kwargs(cfg, _FIELDS, model="dar", cls=DAR), rngs=rngs)
