"""The released TiTok / One-D-Piece MaskGIT sampler (`maskgit.sample_mode("titok", ...)`).

Golden values: tests/fixtures/official/maskgit_sampler_golden.npz holds, per case, the tokens after
every step of bytedance/1d-tokenizer `ImageBert.generate` (942a96f) on a stub model (fixed logits
tables) and fixed uniforms; make_maskgit_sampler_golden.py.txt there made it. jaxtok gets the same
uniforms through `noise=` and must keep and re-mask exactly the same tokens at every step.
"""
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.samplers import maskgit, maskgit_released

KEY = functools.partial(jax.random.key, impl="rbg")  # cheap to compile (see test_maskgit.py)
GOLDEN = dict(np.load(pathlib.Path(__file__).parents[1] / "fixtures" / "official" /
                      "maskgit_sampler_golden.npz"))
TABLE, EMB = jnp.asarray(GOLDEN["table"]), jnp.asarray(GOLDEN["emb"])
LABELS = jnp.asarray(GOLDEN["labels"])
NULL = TABLE.shape[0] - 1
B, K, V = LABELS.shape[0], TABLE.shape[2], TABLE.shape[3]
MASK = V
CASES = sorted({k.split("__")[0] for k in GOLDEN if "__" in k})


def stub_logits(tokens, cls):
  """The golden script's stub model: TABLE[class, #masked][k] + EMB[token at k - 1 (cyclic)]."""
  count = jnp.sum(tokens == MASK, -1)
  return TABLE[cls, count] + EMB[jnp.roll(tokens, 1, axis=1)]


def settings(case):
  """The official generate() arguments of a case as keyword arguments of our sampler."""
  kw = json.loads(str(GOLDEN[f"{case}__settings"]))
  kw["steps"] = kw.pop("num_sample_steps")
  return kw


def start(b=B):
  return jnp.full((b, K), MASK, jnp.int32)


@functools.partial(jax.jit, static_argnames=("case", "guided"))
def _golden_run(u_tok, u_conf, case, guided):
  return maskgit.sample_mode("titok", None, stub_logits, start(), mask_id=MASK, cond=LABELS,
                             uncond=jnp.full_like(LABELS, NULL) if guided else None,
                             noise=(u_tok, u_conf), return_steps=True, **settings(case))


def test_golden_cases_cover_every_decay_and_temperature():
  decays = {settings(c)["guidance_decay"] for c in CASES}
  assert decays == set(maskgit_released.DECAYS)
  assert {"no_guidance", "greedy", "more_steps_than_tokens", "power_cosine_pow0"} <= set(CASES)
  assert len({settings(c)["randomize_temperature"] for c in CASES}) >= 4
  assert any(settings(c)["softmax_temperature_annealing"] for c in CASES)


@pytest.mark.parametrize("case", CASES)
def test_matches_released_generate_step_by_step(case):
  want = GOLDEN[f"{case}__steps"]  # [S, B, K]
  noise = GOLDEN[f"{case}__u_tok"], GOLDEN[f"{case}__u_conf"]
  # The release's unguided path is guidance_scale 0 with "constant"; w = 0 uses c alone either way.
  unguided = settings(case)["guidance_scale"] == 0.0
  for guided in ((False, True) if unguided else (True,)):
    tokens, counts, steps = map(np.asarray, _golden_run(*noise, case, guided))
    for s in range(want.shape[0]):  # kept and re-masked tokens at every step
      np.testing.assert_array_equal(steps[s], want[s], err_msg=f"{case} step {s} guided={guided}")
    np.testing.assert_array_equal(tokens, want[-1])
    np.testing.assert_array_equal(counts, (want == MASK).sum(-1))
  # The release never re-masks a token kept at an earlier step, and the last step fills all.
  assert not ((want[:-1] != MASK) & (want[1:] == MASK)).any()
  assert (want[-1] != MASK).all()


def test_rows_are_independent_and_jit_vmap_work():
  case = "linear"
  u_tok, u_conf = (jnp.asarray(GOLDEN[f"{case}__{n}"]) for n in ("u_tok", "u_conf"))
  both = np.asarray(_golden_run(u_tok, u_conf, case, True)[0])

  def one(row, ut, uc, label):  # a batch of one, as vmap sees it
    return maskgit_released.sample(None, stub_logits, start(1), mask_id=MASK, cond=label[None],
                                   uncond=jnp.full((1,), NULL), noise=(ut[:, None], uc[:, None]),
                                   **settings(case))[0][0]

  rows = jax.jit(jax.vmap(one, in_axes=(0, 1, 1, 0)))(jnp.arange(B), u_tok, u_conf, LABELS)
  np.testing.assert_array_equal(np.asarray(rows), both)

  @jax.jit
  def from_keys(keys):
    return jax.vmap(lambda k: maskgit.sample_mode(
        "titok", k, stub_logits, start(), mask_id=MASK, cond=LABELS,
        uncond=jnp.full_like(LABELS, NULL), preset="titok_l32")[0])(keys)

  keys = jax.random.split(KEY(0), 3)
  out = np.asarray(from_keys(keys))
  assert out.shape == (3, B, K) and not (out == MASK).any()
  assert not np.array_equal(out[0], out[1])  # different keys, different samples
  np.testing.assert_array_equal(np.asarray(from_keys(keys)), out)  # reproducible


def test_traced_scale_and_temperature():
  case = "power_cosine"  # traced values are combined in float32: here the same tokens
  kw = {k: v for k, v in settings(case).items()
        if k not in ("guidance_scale", "randomize_temperature")}
  run = jax.jit(lambda g, t, ut, uc: maskgit_released.sample(
      None, stub_logits, start(), mask_id=MASK, cond=LABELS, uncond=jnp.full_like(LABELS, NULL),
      guidance_scale=g, randomize_temperature=t, noise=(ut, uc), **kw)[0])
  out = run(6.9, 2.8, GOLDEN[f"{case}__u_tok"], GOLDEN[f"{case}__u_conf"])
  np.testing.assert_array_equal(np.asarray(out), GOLDEN[f"{case}__steps"][-1])


def test_partial_input_keeps_known_tokens_and_mask_inside_vocab():
  tokens = start().at[0, :4].set(jnp.array([3, 1, 4, 1])).at[1, :].set(2).at[1, 5].set(MASK)

  def logits_with_mask(tok, cls):  # mask id 7 inside an 8-way vocabulary, with a huge logit
    return stub_logits(jnp.where(tok == 7, MASK, tok), cls).at[..., 7].set(100.0)

  out, counts = jax.jit(lambda r: maskgit_released.sample(
      r, logits_with_mask, jnp.where(tokens == MASK, 7, tokens), mask_id=7, cond=LABELS,
      steps=5, randomize_temperature=2.0))(KEY(1))
  out, counts = np.asarray(out), np.asarray(counts)
  known = np.asarray(tokens) != MASK
  np.testing.assert_array_equal(out[known], np.asarray(tokens)[known])
  assert not (out == 7).any() and counts[-1].tolist() == [0, 0]
  assert counts[0, 1] == 1 and counts[1, 1] == 1  # one masked token left stays masked (n >= 1)


def test_presets_are_sample_arguments():
  args = set(maskgit_released.sample.__code__.co_varnames)
  for name, p in maskgit_released.PRESETS.items():
    assert set(p) <= args, name
    assert p["guidance_decay"] in maskgit_released.DECAYS
  assert maskgit_released.preset("titok_s128")["steps"] == 64
  # Explicit settings override the preset.
  run = lambda **kw: maskgit.sample_mode("titok", KEY(2), stub_logits, start(), mask_id=MASK,
                                         cond=LABELS, uncond=jnp.full_like(LABELS, NULL), **kw)
  a = run(preset="titok_b64", steps=3, return_steps=True)[2]
  b = run(**{**maskgit_released.preset("titok_b64"), "steps": 3}, return_steps=True)[2]
  assert a.shape == (3, B, K)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_maskgit_mode_is_the_existing_sampler():
  kw = dict(mask_id=MASK, steps=3, cond=LABELS)
  a = maskgit.sample_mode("maskgit", KEY(3), stub_logits, start(), **kw)[0]
  b = maskgit.sample(KEY(3), stub_logits, start(), **kw)[0]
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_errors():
  run = lambda mode="titok", **kw: maskgit.sample_mode(mode, KEY(0), stub_logits, start(),
                                                       **{"mask_id": MASK, "cond": LABELS, **kw})
  with pytest.raises(ValueError, match=r"mode must be one of \('maskgit', 'titok'\), got 'muse'"):
    run("muse")
  with pytest.raises(ValueError, match=r"preset must be one of \[.*'titok_l32'.*got 'titok_xl'"):
    run(preset="titok_xl")
  with pytest.raises(ValueError, match="preset is only defined for mode 'titok'"):
    run("maskgit", preset="titok_l32", steps=2)
  with pytest.raises(ValueError, match=r"settings for mode 'titok' must be .*got \['cfg_scale'\]"):
    run(cfg_scale=2.0)
  with pytest.raises(ValueError, match="steps must be an int >= 1, got -2"):
    run(steps=-2)
  with pytest.raises(ValueError, match="guidance_scale must be a finite number, got nan"):
    run(guidance_scale=float("nan"))
  with pytest.raises(ValueError, match=r"guidance_decay must be one of .*got 'cosine'"):
    run(guidance_decay="cosine")
  with pytest.raises(ValueError, match="randomize_temperature must be a finite number >= 0"):
    run(randomize_temperature=-1.0)
  with pytest.raises(ValueError, match="guidance_scale_pow must be a finite number >= 0, got -0.5"):
    run(guidance_scale_pow=-0.5)
  with pytest.raises(ValueError, match="softmax_temperature_annealing must be a bool, got 'yes'"):
    run(softmax_temperature_annealing="yes")
  with pytest.raises(ValueError, match=r"noise must be a pair of uniform arrays .*got shapes"):
    run(noise=(jnp.zeros((8, B, K, V)), jnp.zeros((8, B, K + 1))))
  with pytest.raises(ValueError, match="rng must be a key when noise is None"):
    maskgit_released.sample(None, stub_logits, start(), mask_id=MASK, cond=LABELS)
  with pytest.raises(ValueError, match=r"mask_id must be an int in \[0, 8\].*got 9"):
    run(mask_id=9)


def test_generate_tool_path_equals_the_released_sampler():
  """`eval.generate` with mode "titok" runs `maskgit_released.sample` with the preset's settings,
  explicit options overriding them, and guidance against the null class (-1)."""
  from flax import nnx
  from jaxtok.configs import maskgit_titok
  from jaxtok.eval import generate
  from jaxtok.generators import bert
  from jaxtok.samplers import maskgit_released
  cfg = maskgit_titok.get_config("tiny,classes=4")
  model = bert.make_model(cfg.model, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  opts = generate.options_from_config(cfg.sampling, mode="titok", preset="titok_b64", steps=3,
                                      cfg_scale=2.5)
  assert opts.titok_settings() == dict(maskgit_released.preset("titok_b64"), steps=3,
                                       guidance_scale=2.5)
  labels = jnp.array([0, 3], jnp.int32)
  got = generate.make_sampler("maskgit", graphdef, params, opts)(jax.random.key(5), labels)
  tokens = jnp.full((2, model.seq_len), model.mask_id, jnp.int32)
  want, _ = maskgit_released.sample(jax.random.key(5), lambda t, c: model(t, c), tokens,
                                    mask_id=model.mask_id, cond=labels,
                                    uncond=jnp.full_like(labels, -1), **opts.titok_settings())
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert int(jnp.max(got)) < model.mask_id
  with pytest.raises(ValueError, match="sampling mode must be 'maskgit' or 'titok', got 'x'"):
    generate.options_from_config(cfg.sampling, mode="x")
  with pytest.raises(ValueError, match=r"unknown config.sampling key\(s\) \['stepz'\]"):
    generate.options_from_config(dict(cfg.sampling, stepz=3))
