"""Cross-attention in the one Attention / Block / Stack: a float64 numpy reference (separate q/kv
projections with Wc != W, and the fused qkv used for a context), context masks, permutation
invariance over context positions, the cross branch as an add-on (off = the block without it), D-AR's
"ada" order by hand, cached decoding == recompute, scanned == unrolled (outputs and gradients, with
remat), gradients reaching the kv projection, and the argument checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.nn import attention
from jaxtok.nn.block import Block, CrossCache
from jaxtok.nn.stack import Stack

HAS_GPU = jax.default_backend() == "gpu"
IMPLS = [None, "xla", pytest.param("cudnn", marks=pytest.mark.skipif(
    not HAS_GPU, reason="cudnn needs an NVIDIA GPU (CPU only here: its fallback is tested in "
                        "test_attention.py)"))]
B, T, S, W, WC, H = 2, 5, 7, 16, 12, 2


def _randomize(module, seed=1, scale=0.3):
  """Random values for every parameter, so each of them (biases, norms) enters the comparison."""
  state = nnx.state(module, nnx.Param)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  nnx.update(module, jax.tree.unflatten(tree, [jax.random.normal(k, l.shape) * scale
                                               for k, l in zip(keys, leaves)]))
  return jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(nnx.state(module)))


def _np_softmax_attend(q, k, v, mask):
  """q [B, T, H, E], k/v [B, S, H, E], bool mask [B, 1, T, S] -> [B, T, H, E] (float64)."""
  s = np.einsum("bthe,bshe->bhts", q, k) / np.sqrt(q.shape[-1])
  if mask is not None:
    s = np.where(mask, s, -1e30)
  p = np.exp(s - s.max(-1, keepdims=True))
  return np.einsum("bhts,bshe->bthe", p / p.sum(-1, keepdims=True), v)


def _np_cross(x, ctx, p, mask=None, fused=False):
  """Cross-attention of x [B, T, W] to ctx [B, S, Wc] from the parameters p (float64 numpy)."""
  if fused:
    wq, bq, wkv, bkv = p["qkv"][:, 0], p["qkv_bias"][0], p["qkv"][:, 1:], p["qkv_bias"][1:]
  else:
    wq, bq, wkv, bkv = p["q"], p["q_bias"], p["kv"], p["kv_bias"]
  q = np.einsum("btw,whe->bthe", x, wq) + bq
  kv = np.einsum("bsw,wche->bsche", ctx, wkv) + bkv
  y = _np_softmax_attend(q, kv[:, :, 0], kv[:, :, 1], mask)
  return np.einsum("bthe,hew->btw", y, p["out"]) + p["out_bias"]


def _np_ln(x, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(((x - mu)**2).mean(-1, keepdims=True) + eps)


def _np_dense(x, p):
  return x @ p["kernel"] + p["bias"]


def _np_silu(x):
  return x / (1 + np.exp(-x))


def _np_self_attn(x, p):
  w = x.shape[-1]
  q, k, v = (np.einsum("btw,whe->bthe", x, p["qkv"][:, i]) + p["qkv_bias"][i] for i in range(3))
  return np.einsum("bthe,hew->btw", _np_softmax_attend(q, k, v, None), p["out"]) + p["out_bias"]


def _inputs(seed=0, wc=WC):
  kx, kc, km = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(kx, (B, T, W))
  ctx = jax.random.normal(kc, (B, S, wc))
  mask = np.array(jax.random.uniform(km, (B, 1, T, S)) < 0.6)
  mask[..., 0] = True  # every query keeps a context position
  return x, ctx, mask


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("impl", IMPLS)
def test_cross_attention_equals_numpy_reference_with_a_context_mask(impl, fused):
  wc = W if fused else WC
  attn = attention.Attention(W, H, cross=not fused, context_dim=None if fused else wc,
                             implementation=impl, rngs=nnx.Rngs(0))
  assert attn.cross is (not fused)
  p = _randomize(attn)
  if fused:
    assert attn.qkv.shape == (W, 3, H, W // H) and attn.q is None and attn.kv is None
  else:
    assert attn.qkv is None and attn.q.shape == (W, H, W // H) and attn.kv.shape == (WC, 2, H, W // H)
    assert attn.q_bias.shape == (H, W // H) and attn.kv_bias.shape == (2, H, W // H)
    specs = nnx.get_partition_spec(nnx.state(attn))
    assert tuple(specs["q"].get_value()) == ("embed", "heads", "kv")
    assert tuple(specs["kv"].get_value()) == ("embed", None, "heads", "kv")
  x, ctx, mask = _inputs(wc=wc)
  got = jax.jit(lambda x, c, m: attn(x, context=c, mask=m))(x, ctx, jnp.asarray(mask))
  want = _np_cross(np.asarray(x, np.float64), np.asarray(ctx, np.float64), p, mask, fused=fused)
  assert got.shape == (B, T, W) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=1e-5, rtol=0)
  # The precomputed context keys/values (the decoding path, heads-major einsums) give the same.
  kv = attn.context_kv(ctx)
  assert kv.k.shape == (B, H, S, W // H)
  np.testing.assert_allclose(attn.attend_context(x, kv, mask=jnp.asarray(mask)), want, atol=1e-5, rtol=0)


def _cross_block(cross="residual", seed=0, **kw):
  return Block(W, H, mlp_hidden=32, cross=cross, context_dim=WC, rngs=nnx.Rngs(seed), **kw)


def test_permuting_context_positions_and_masked_positions_leave_the_output_unchanged():
  blk = _cross_block()
  _randomize(blk)
  x, ctx, mask = _inputs(seed=3)
  f = jax.jit(lambda x, c, m: blk(x, context=c, context_mask=m))
  ref = f(x, ctx, jnp.asarray(mask))
  perm = np.random.RandomState(0).permutation(S)
  np.testing.assert_allclose(f(x, ctx[:, perm], jnp.asarray(mask[..., perm])), ref, rtol=1e-5, atol=1e-5)
  # A context position no query may see does not matter; one that is seen does.
  hidden = np.ones((B, 1, 1, S), bool)
  hidden[..., 3] = False
  g = lambda c: f(x, c, jnp.asarray(hidden))
  np.testing.assert_allclose(g(ctx.at[:, 3].set(100.0)), g(ctx), rtol=1e-6, atol=1e-6)
  assert not np.allclose(g(ctx.at[:, 2].set(100.0)), g(ctx), atol=1e-3)


def test_cross_branch_is_an_add_on_to_the_same_block():
  """Without cross the block draws the same parameters as before (cross parts are created last);
  with the cross out-projection zeroed, a cross block equals the block without it (with AdaLN)."""
  plain = Block(W, H, mlp_hidden=32, adaln=True, rngs=nnx.Rngs(0))
  crossed = _cross_block(adaln=True)
  ps, pc = nnx.to_pure_dict(nnx.state(plain)), nnx.to_pure_dict(nnx.state(crossed))
  assert set(pc) - set(ps) == {"norm_c", "cross_attn"}
  for a, b in zip(jax.tree.leaves(ps), jax.tree.leaves({k: pc[k] for k in ps})):
    np.testing.assert_array_equal(a, b)
  _randomize(plain, seed=4)
  _randomize(crossed, seed=5)
  state = nnx.state(crossed)
  sub = nnx.to_pure_dict(nnx.state(plain))
  nnx.replace_by_pure_dict(state, sub)
  nnx.update(crossed, state)
  crossed.cross_attn.out.set_value(jnp.zeros_like(crossed.cross_attn.out.get_value()))
  crossed.cross_attn.out_bias.set_value(jnp.zeros_like(crossed.cross_attn.out_bias.get_value()))
  x, ctx, _ = _inputs(seed=6)
  cond = jax.random.normal(jax.random.key(7), (B, W))
  got = jax.jit(lambda x, c, ctx: crossed(x, cond=c, context=ctx))(x, cond, ctx)
  np.testing.assert_allclose(got, jax.jit(lambda x, c: plain(x, cond=c))(x, cond), atol=1e-6)


def test_ada_order_is_dars_sit_block_by_hand():
  """cross="ada": s = cross(LN x, LN(mlp(ctx))); mods = ada(silu(t + s)) per position; then the
  modulated self-attention and SiLU MLP (showlab/D-AR SiTBlock), against float64 numpy."""
  blk = Block(W, H, mlp_hidden=32, mlp="silu", norm_eps=1e-6, norm_affine=False, adaln=True,
              cross="ada", context_dim=WC, context_mlp="silu", rngs=nnx.Rngs(0))
  p = _randomize(blk, seed=8)
  assert blk.norm_c.scale is None and blk.norm_ctx.scale is None  # LayerNorm without affine
  x, ctx, mask = _inputs(seed=9)
  t = jax.random.normal(jax.random.key(10), (B, W))
  got = jax.jit(lambda x, c, t, m: blk(x, cond=t, context=c, context_mask=m))(x, ctx, t, jnp.asarray(mask))
  xn, cn, tn = (np.asarray(a, np.float64) for a in (x, ctx, t))
  c = _np_ln(_np_dense(_np_silu(_np_dense(cn, p["context_mlp"]["up"])), p["context_mlp"]["down"]))
  s = _np_cross(_np_ln(xn), c, p["cross_attn"], mask)
  mods = _np_dense(_np_silu(tn[:, None] + s), p["ada"])
  g_msa, g_mlp, sh_msa, sc_msa, sh_mlp, sc_mlp = np.split(mods, 6, axis=-1)
  h = xn + g_msa * _np_self_attn(_np_ln(xn) * (1 + sc_msa) + sh_msa, p["attn"])
  mlp = lambda u: _np_dense(_np_silu(_np_dense(u, p["mlp"]["up"])), p["mlp"]["down"])
  want = h + g_mlp * mlp(_np_ln(h) * (1 + sc_mlp) + sh_mlp)
  np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=2e-5, rtol=1e-5)


DEPTH = 2


def _stack(scan=False, remat="none", cross="residual"):
  make = lambda r: Block(W, H, mlp_hidden=32, rope="1d", cross=cross, context_dim=WC,
                         context_mlp="gelu", rngs=r)
  return Stack(DEPTH, make, scan_layers=scan, remat=remat, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def stacks():
  """(unrolled, scanned with the unrolled weights, scanned with remat "full" likewise)."""
  unrolled = _stack()
  _randomize(unrolled, seed=11, scale=0.2)
  layers = nnx.to_pure_dict(nnx.state(unrolled))["blocks"]
  stacked = {"blocks": jax.tree.map(lambda *a: jnp.stack(a), *[layers[i] for i in range(DEPTH)])}
  out = [unrolled]
  for remat in ("none", "full"):
    scanned = _stack(scan=True, remat=remat)
    state = nnx.state(scanned)
    nnx.replace_by_pure_dict(state, stacked)
    nnx.update(scanned, state)
    out.append(scanned)
  return tuple(out)


@pytest.mark.slow
def test_scanned_equals_unrolled_with_cross_outputs_and_gradients_under_remat(stacks):
  unrolled, scanned, remat = stacks
  x, ctx, mask = _inputs(seed=12)
  kw = lambda c: dict(causal=True, context=c, context_mask=jnp.asarray(mask))

  def loss_grads(model):
    graphdef, state = nnx.split(model)
    loss = lambda s, c: jnp.sum(nnx.merge(graphdef, s)(x, **kw(c)) ** 2)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(state, ctx)

  (lu, (gu, gcu)), (ls, (gs, gcs)), (lr, (gr, gcr)) = (loss_grads(m) for m in stacks)
  np.testing.assert_allclose(scanned(x, **kw(ctx)), unrolled(x, **kw(ctx)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ls, lu, rtol=1e-5)
  np.testing.assert_allclose(lr, lu, rtol=1e-5)
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *[gu["blocks"][i] for i in range(DEPTH)])
  for got in (gs, gr):
    for a, b in zip(jax.tree.leaves(got["blocks"]), jax.tree.leaves(stacked)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  for g in (gcs, gcr):
    np.testing.assert_allclose(g, gcu, rtol=1e-4, atol=1e-5)
  # Gradients reach the context's kv projection, its per-block map and the context itself.
  g0 = gu["blocks"][0]
  for part in (g0["cross_attn"]["kv"], g0["cross_attn"]["q"], g0["context_mlp"]["up"]["kernel"], gcu):
    assert float(jnp.abs(part.get_value() if hasattr(part, "get_value") else part).sum()) > 0


@pytest.mark.slow
def test_cached_extend_equals_recompute_with_the_context_computed_once(stacks):
  unrolled, scanned, _ = stacks
  x, ctx, mask = _inputs(seed=13)
  cm = jnp.asarray(mask[:, :, :1].repeat(T, axis=2))  # one context mask row for all positions
  full = unrolled(x, causal=True, context=ctx, context_mask=cm)
  for model in (unrolled, scanned):
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, x, ctx):
      m = nnx.merge(graphdef, state)
      cache = m.init_cache(B, T, context=ctx)
      y0, cache = m.extend(x[:, :2], cache, 0, context_mask=cm[:, :, :2])
      outs, context0 = [y0], cache
      for i in range(2, T):
        y, cache = m.extend(x[:, i:i + 1], cache, jnp.int32(i), context_mask=cm[:, :, i:i + 1])
        outs.append(y)
      return jnp.concatenate(outs, axis=1), context0, cache

    got, first, last = run(state, x, ctx)
    np.testing.assert_allclose(got, full, rtol=1e-5, atol=1e-5)
    firsts = first if isinstance(first, tuple) and not isinstance(first, CrossCache) else (first,)
    lasts = last if isinstance(last, tuple) and not isinstance(last, CrossCache) else (last,)
    for a, b in zip(firsts, lasts):  # the context keys/values are reused, never rewritten
      assert isinstance(b, CrossCache)
      np.testing.assert_array_equal(a.context.k, b.context.k)
      np.testing.assert_array_equal(a.context.v, b.context.v)
  cache = scanned.init_cache(B, T, context=ctx)
  assert cache.self_kv.k.shape == (DEPTH, B, H, T, W // H) and cache.context.k.shape == (DEPTH, B, H, S, W // H)


def test_bad_arguments_name_what_was_expected():
  with pytest.raises(ValueError, match="cross must be None or one of"):
    Block(W, H, mlp_hidden=32, cross="post", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="needs adaln=True and cond_dim = width 16"):
    Block(W, H, mlp_hidden=32, cross="ada", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="post_norm=True cannot take it"):
    Block(W, H, mlp_hidden=32, cross="residual", post_norm=True, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="context_dim / context_mlp need cross"):
    Block(W, H, mlp_hidden=32, context_dim=8, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="context_dim must be None or an int >= 1, got 0"):
    attention.Attention(W, H, context_dim=0, rngs=nnx.Rngs(0))
  blk = _cross_block()
  x, ctx, _ = _inputs()
  with pytest.raises(ValueError, match="needs context"):
    blk(x)
  with pytest.raises(ValueError, match="context given to a block built without cross"):
    Block(W, H, mlp_hidden=32, rngs=nnx.Rngs(0))(x, context=ctx)
  with pytest.raises(ValueError, match=r"context must be \[B, S, 12\], got \(2, 7, 16\)"):
    blk.cross_attn(x, context=jnp.zeros((B, S, W)))
  with pytest.raises(ValueError, match="causal=True needs self-attention"):
    blk.cross_attn(x, context=ctx, causal=True)
  with pytest.raises(ValueError, match="use context_kv once, then attend_context"):
    blk.cross_attn.extend(x, blk.attn.init_cache(B, T), 0)
  with pytest.raises(ValueError, match="needs a CrossCache"):
    blk.extend(x, blk.attn.init_cache(B, T), 0)
