"""E-CAR's multistage flow (Yuan et al. 2024, "E-CAR: Efficient Continuous Autoregressive Image
Generation via Multistage Modeling"): stage bookkeeping, the jump between stages, and the sampler.

E-CAR generates a token map stage by stage at doubling resolution (sides r_0 < ... < r_{S-1} = G,
r_{k+1} = 2 r_k) while denoising it: the flow trajectory t in [0, 1] (this package's convention,
t = 0 noise, t = 1 data: `samplers.flow`) is cut at boundaries 0 = b_0 < b_1 < ... < b_S = 1, and
stage k only integrates its own piece. It follows Pyramidal Flow Matching (Jin et al. 2024), which
E-CAR builds its multistage flow on:

  stage k ends at   x_e = e_k D_k(x) + (1 - e_k) n,                       e_k = b_{k+1}
  and starts at     x_s = s_k U(D_{k-1}(x)) + (1 - s_k) n,  s_0 = 0,      s_k = b_k / (2 - b_k)

with D_k the 2x2-average pooling of the data x to side r_k, U nearest 2x upsampling and one noise
n ~ N(0, I) at side r_k; in between, x_t moves on the straight line, velocity (x_e - x_s) / (e_k -
s_k) per unit of t. The jump from stage k-1 (ended at signal level b_k) to stage k renoises the
upsampled map, x_s = alpha U(x_e) + beta n', alpha = 1 / (2 - b), beta = sqrt(3)(1 - b) / (2 - b),
with n' Gaussian of unit variance and correlation -1/3 inside each 2x2 block: then x_s has exactly
the distribution above (mean s_k U(D_{k-1} x), independent noise of std 1 - s_k per element), which
is why the start time s_k is below the previous end b_k (Pyramid Flow's "corrected" start, gamma =
1/3). The windows [s_k, e_k] therefore overlap at each jump while the boundaries b partition [0, 1].
With one stage, s_0 = 0 and e_0 = 1: plain rectified flow over the whole grid.

Checked against Pyramid Flow's released code (jy0205/Pyramid-Flow, diffusion_schedulers/
scheduling_flow_matching.py and its pipelines), in its sigma = 1 - t notation: stage_range = [0, 1/3,
2/3, 1] (our `uniform_bounds`); stage k > 0 starts at the "corrected" signal level
b / (sqrt(1 + 1/gamma) (1 - b) + b) = b / (2 - b) for gamma = 1/3 (our `windows`); the jump is
alpha * latents + beta * block_noise with alpha = 1 / (sqrt(1 + 1/gamma) (1 - b) + b) = 1 / (2 - b),
beta = alpha (1 - b) / sqrt(gamma) = sqrt(3) (1 - b) / (2 - b) (our `jump_coefficients`), and the
block noise has covariance (1 + gamma) I - gamma J per 2x2 block (our `block_noise`). Its training
(`add_pyramid_noise`) builds the pyramid by bilinear /2 resizing (exactly our 2x2 mean), takes
start = s U(D_{k-1} x) + (1 - s) n_k and end = e D_k x + (1 - e) n_k with one unit-variance noise
n_k per stage (end = x at the last stage), draws the in-window time uniformly and regresses the
constant secant velocity: our `trajectory` + `interpolate` have the same per-stage marginals (ours
couples the stages through the jump, as teacher forcing of E-CAR's stage-causal trunk needs one
joint path). Known differences: Pyramid Flow relabels each stage's timestep embedding by the
stages' flow lengths (non-overlapping labels), while the head here reads the signal level t itself
(a fixed linear reparameterisation of the same window; the overlap of windows at a jump is told
apart by the stage embedding in z); and Pyramid Flow splits each batch equally across stages,
while `generators.ecar.loss` trains every stage of every example with equal weights (the same
expected objective up to a constant factor). E-CAR's own method section could not be read here
(see `jaxtok.generators.ecar`).

Maps are float32 [B, r, r, D] (row-major token grids; a generator's [B, r*r, D] sequence reshaped).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.samplers import _checks, flow, guidance


# ---- stage bookkeeping (pure, host-side numbers) ----

def stage_sides(grid_side: int, num_stages: int) -> tuple[int, ...]:
  """Sides (r_0, ..., r_{S-1}) of the stage maps: r_k = grid_side / 2^(S-1-k).

  Raises:
    ValueError: unless grid_side is divisible by 2^(num_stages - 1).
  """
  _checks.positive_int("grid_side", grid_side)
  _checks.positive_int("num_stages", num_stages)
  f = 2 ** (num_stages - 1)
  if grid_side % f:
    raise ValueError(f"grid_side must be divisible by 2^(num_stages-1)={f} (num_stages="
                     f"{num_stages}), got {grid_side}")
  return tuple(grid_side // 2 ** (num_stages - 1 - k) for k in range(num_stages))


def uniform_bounds(num_stages: int) -> np.ndarray:
  """Boundaries b float64 [S + 1] = k / S (Pyramid Flow's equal split of the trajectory)."""
  _checks.positive_int("num_stages", num_stages)
  return np.arange(num_stages + 1, dtype=np.float64) / num_stages


def check_bounds(bounds) -> np.ndarray:
  """Boundaries as float64 [S + 1]; ValueError unless 0 = b_0 < b_1 < ... < b_S = 1."""
  b = np.asarray(bounds, np.float64)
  if b.ndim != 1 or b.size < 2 or b[0] != 0.0 or b[-1] != 1.0 or np.any(np.diff(b) <= 0):
    raise ValueError(f"bounds must increase strictly from 0 to 1 (S + 1 values), got {bounds!r}")
  return b


def windows(bounds) -> tuple[np.ndarray, np.ndarray]:
  """(starts s float64 [S], ends e float64 [S]) of each stage's time window: e_k = b_{k+1},
  s_0 = 0 and s_k = b_k / (2 - b_k) (the start after the jump's renoising)."""
  b = check_bounds(bounds)
  starts = b[:-1] / (2.0 - b[:-1])
  return starts, b[1:].copy()


def jump_coefficients(b: float) -> tuple[float, float]:
  """(alpha, beta) of the jump at boundary b: x_s = alpha U(x_e) + beta n' (see the module doc)."""
  if not 0.0 < b < 1.0:
    raise ValueError(f"a jump boundary must lie in (0, 1), got {b}")
  return 1.0 / (2.0 - b), math.sqrt(3.0) * (1.0 - b) / (2.0 - b)


# ---- resampling between stages ----

def pool2(x: jax.Array) -> jax.Array:
  """2x2 average pooling of maps [B, 2h, 2w, D] -> [B, h, w, D] (Pyramid Flow's bilinear /2)."""
  b, h, w, d = x.shape
  if h % 2 or w % 2:
    raise ValueError(f"pool2 needs even map sides, got {h} x {w}")
  return x.reshape(b, h // 2, 2, w // 2, 2, d).mean(axis=(2, 4))


def upsample2(x: jax.Array) -> jax.Array:
  """Nearest 2x upsampling of maps [B, h, w, D] -> [B, 2h, 2w, D]; pool2(upsample2(x)) == x."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def pool_to(x: jax.Array, side: int) -> jax.Array:
  """Repeated `pool2` of square maps [B, G, G, D] down to [B, side, side, D]."""
  while x.shape[1] > side:
    x = pool2(x)
  if x.shape[1] != side:
    raise ValueError(f"cannot pool a map of side {x.shape[1]} to side {side} by halving")
  return x


def block_noise(rng: jax.Array, shape) -> jax.Array:
  """n' float32 [B, 2h, 2w, D]: unit variance, correlation -1/3 between the 4 entries of each 2x2
  block, independent otherwise (covariance 4/3 I - 1/3 J per block); its 2x2 block means are 0."""
  m = jax.random.normal(rng, shape, jnp.float32)
  return (2.0 / math.sqrt(3.0)) * (m - upsample2(pool2(m)))


def jump(x_end: jax.Array, b: float, rng: jax.Array, *, temperature=1.0) -> jax.Array:
  """Start map [B, 2r, 2r, D] of the next stage from the end map x_end [B, r, r, D] of a stage
  that stopped at signal level b: alpha U(x_end) + temperature * beta n'."""
  alpha, beta = jump_coefficients(b)
  up = upsample2(jnp.asarray(x_end, jnp.float32))
  return alpha * up + (temperature * beta) * block_noise(rng, up.shape)


# ---- training trajectory ----

class StageState(NamedTuple):
  inputs: jax.Array  # float32 [B, r_k, r_k, D]: U(end of stage k-1) (zeros for stage 0)
  start: jax.Array   # float32 [B, r_k, r_k, D]: x at t = s_k
  end: jax.Array     # float32 [B, r_k, r_k, D]: x at t = e_k


def trajectory(x: jax.Array, bounds, rng: jax.Array) -> list[StageState]:
  """The stage states of clean maps x [B, G, G, D] for `bounds` (S stages), coupled exactly as the
  sampler couples them: stage 0 starts from n_0 ~ N(0, I) (key fold_in(rng, 0)); stage k >= 1
  starts from `jump(end of stage k-1, b_k, fold_in(rng, k))`, which is s_k U(D_{k-1} x) + (1 - s_k)
  n_k for a standard normal n_k, and ends at e_k D_k(x) + (1 - e_k) n_k with that n_k.
  """
  b = check_bounds(bounds)
  num_stages = b.size - 1
  sides = stage_sides(x.shape[1], num_stages)
  starts, ends = windows(b)
  x = jnp.asarray(x, jnp.float32)
  out = []
  for k, side in enumerate(sides):
    target = pool_to(x, side)
    if k == 0:
      noise = jax.random.normal(jax.random.fold_in(rng, 0), target.shape, jnp.float32)
      inputs, start = jnp.zeros_like(target), noise
    else:
      prev_end = out[-1].end
      inputs = upsample2(prev_end)
      start = jump(prev_end, b[k], jax.random.fold_in(rng, k))
      noise = (start - starts[k] * upsample2(pool_to(x, sides[k - 1]))) / (1.0 - starts[k])
    out.append(StageState(inputs, start, ends[k] * target + (1.0 - ends[k]) * noise))
  return out


def interpolate(state: StageState, s: float, e: float, tau: jax.Array):
  """(x_t, t, velocity) at local times tau in [0, 1] (broadcast against the maps' leading axes):
  x_t = start + tau (end - start), t = s + tau (e - s), velocity = (end - start) / (e - s)."""
  tau = jnp.asarray(tau, jnp.float32)
  t_b = tau.reshape(tau.shape + (1,) * (state.start.ndim - tau.ndim))
  x_t = state.start + t_b * (state.end - state.start)
  return x_t, s + tau * (e - s), (state.end - state.start) / (e - s)


# ---- sampling ----

class ECARSample(NamedTuple):
  tokens: jax.Array              # float32 [B, G*G, D]: the last stage's map, row-major
  stage_maps: tuple              # float32 [B, r_k, r_k, D] per stage: its end state (previews)


def stage_head_steps(head_steps, num_stages: int) -> tuple[int, ...]:
  """Per-stage head step counts from an int or one int per stage (static Python ints)."""
  arr = np.asarray(head_steps)
  if arr.ndim == 0:
    return (_checks.positive_int("head_steps", head_steps),) * num_stages
  if arr.shape != (num_stages,) or not np.issubdtype(arr.dtype, np.integer) or arr.min() < 1:
    raise ValueError(f"head_steps must be an int >= 1 or {num_stages} ints >= 1 (one per stage), "
                     f"got {head_steps!r}")
  return tuple(int(v) for v in arr)


def sample(rng, condition_fn: Callable, head_fn: Callable, *, batch: int, grid_side: int,
           token_dim: int, num_stages: int, head_steps, bounds: Sequence[float] | None = None,
           cond=None, uncond=None, cfg_scale=1.0, cfg_schedule="constant", cfg_power=1.0,
           temperature=1.0, head_method="euler") -> ECARSample:
  """Generates a G x G map of continuous tokens stage by stage; returns `ECARSample`.

  condition_fn(inputs, cond) -> z [B', r_k * r_k, W]: inputs is the tuple of stage input maps
    (inputs_j float32 [B', r_j, r_j, D], j = 0..k; inputs_0 zeros, inputs_j = U(end of stage j-1));
    the conditions of stage k's tokens (B' = B, or 2B with guidance: [cond; uncond]).
  head_fn(x [M, D], t float32 scalar, z [M, W]) -> velocity [M, D] per unit of t (t = 0 noise).

  Stage k integrates its window [s_k, e_k] in head_steps[k] steps of `flow.sample` (Euler or Heun,
  CFG on the head's velocity at scale `guidance.scale_at(cfg_schedule, cfg_scale, (k+1)/S)`), from
  temperature * N(0, I) (stage 0) or the jump with temperature-scaled fresh noise. Keys: stage k's
  noise from fold_in(rng, k). Model calls: S condition calls and sum(head_steps) head calls (x2
  with Heun). All stages unroll inside one trace (shapes differ per stage).
  """
  for name, v in (("batch", batch), ("token_dim", token_dim)):
    _checks.positive_int(name, v)
  sides = stage_sides(grid_side, num_stages)
  b = check_bounds(uniform_bounds(num_stages) if bounds is None else bounds)
  if b.size != num_stages + 1:
    raise ValueError(f"bounds must have num_stages + 1 = {num_stages + 1} values, got {b.size}")
  _checks.temperature(temperature)
  guidance.check_schedule(cfg_schedule)
  guidance.check_scale(cfg_scale)
  steps = stage_head_steps(head_steps, num_stages)
  starts, ends = windows(b)
  guided = uncond is not None
  inputs, maps, x = [], [], None
  for k, side in enumerate(sides):
    key = jax.random.fold_in(rng, k)
    if k == 0:
      inp = jnp.zeros((batch, side, side, token_dim), jnp.float32)
      x = temperature * jax.random.normal(key, inp.shape, jnp.float32)
    else:
      inp = upsample2(x)
      x = jump(x, b[k], key, temperature=temperature)
    inputs.append(inp)
    if guided:
      zc, zu = guidance.call_pair(lambda *a: condition_fn(tuple(a[:-1]), a[-1]), tuple(inputs),
                                  cond, uncond)
    else:
      zc, zu = condition_fn(tuple(inputs), cond), None
    rows = lambda z: z.reshape(batch * side * side, -1)
    s, e = float(starts[k]), float(ends[k])
    # The window [s, e] as flow.sample's [0, 1]: dx/dtau = (e - s) v(x, s + tau (e - s)).
    local = lambda xr, tau, z, s=s, e=e: (e - s) * jnp.asarray(head_fn(xr, s + tau * (e - s), z),
                                                                jnp.float32)
    scale = guidance.scale_at(cfg_schedule, cfg_scale, (k + 1) / num_stages, cfg_power)
    out = flow.sample(local, x.reshape(batch * side * side, token_dim), rows(zc),
                      uncond=None if zu is None else rows(zu), steps=steps[k],
                      method=head_method, cfg_scale=scale)
    x = out.reshape(batch, side, side, token_dim)
    maps.append(x)
  return ECARSample(x.reshape(batch, grid_side * grid_side, token_dim), tuple(maps))


def model_calls(num_stages: int, head_steps, head_method: str = "euler") -> dict[str, int]:
  """{"condition": S, "head": sum of head steps (x2 for Heun)} per image batch of `sample`."""
  steps = stage_head_steps(head_steps, num_stages)
  return {"condition": num_stages, "head": sum(steps) * (2 if head_method == "heun" else 1)}
