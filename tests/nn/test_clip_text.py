"""CLIP text encoder, its converter (open_clip/OpenAI and HF layouts) and the BPE tokenizer.

Parity is against a numpy forward of the official open_clip `TextTransformer` written here from its
definition (token + position embedding, pre-LN ResidualAttentionBlocks with the causal mask and
QuickGELU, ln_final, pooled = EOT row @ text_projection), on tiny random official-layout weights.
"""
import gzip
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from jaxtok.convert import clip_text as C
from jaxtok.nn import clip_text as T
from jaxtok.nn.mlp import Mlp
from jaxtok.text import clip_bpe

W, L, H, V, CTX, D = 16, 2, 2, 40, 8, 12


def official_state(seed=0, width=W, depth=L, vocab=V, ctx=CTX, dim=D):
  """A random open_clip-layout text tower plus the keys a full CLIP file carries (dropped)."""
  rng = np.random.default_rng(seed)
  n = lambda *s: rng.normal(0, 0.3, s).astype(np.float32)
  sd = {"token_embedding.weight": n(vocab, width), "positional_embedding": n(ctx, width),
        "ln_final.weight": 1 + n(width), "ln_final.bias": n(width), "text_projection": n(width, dim),
        "logit_scale": np.ones((), np.float32), "visual.proj": n(4, 4)}
  for i in range(depth):
    p = f"transformer.resblocks.{i}."
    sd.update({p + "ln_1.weight": 1 + n(width), p + "ln_1.bias": n(width),
               p + "attn.in_proj_weight": n(3 * width, width), p + "attn.in_proj_bias": n(3 * width),
               p + "attn.out_proj.weight": n(width, width), p + "attn.out_proj.bias": n(width),
               p + "ln_2.weight": 1 + n(width), p + "ln_2.bias": n(width),
               p + "mlp.c_fc.weight": n(4 * width, width), p + "mlp.c_fc.bias": n(4 * width),
               p + "mlp.c_proj.weight": n(width, 4 * width), p + "mlp.c_proj.bias": n(width)})
  return sd


def _ln(x, w, b, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu)**2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * w + b


def resblock(x, p, heads, *, mask=None, act="gelu"):
  """numpy float64 open_clip ResidualAttentionBlock (nn.MultiheadAttention, pre-LN eps 1e-5): x
  [B, T, W]; p(name) the tensor `name` of the block; mask additive [T, T] or None."""
  b, t, w = x.shape
  e = w // heads
  h = _ln(x, p("ln_1.weight"), p("ln_1.bias"))
  qkv = h @ p("attn.in_proj_weight").T + p("attn.in_proj_bias")
  q, k, v = (qkv[..., j * w:(j + 1) * w].reshape(b, t, heads, e) for j in range(3))
  s = np.einsum("bthe,bshe->bhts", q, k) / np.sqrt(e) + (0 if mask is None else mask)
  s = np.exp(s - s.max(-1, keepdims=True))
  s /= s.sum(-1, keepdims=True)
  o = np.einsum("bhts,bshe->bthe", s, v).reshape(b, t, w)
  x = x + o @ p("attn.out_proj.weight").T + p("attn.out_proj.bias")
  h = _ln(x, p("ln_2.weight"), p("ln_2.bias")) @ p("mlp.c_fc.weight").T + p("mlp.c_fc.bias")
  if act == "quick_gelu":
    h = h / (1 + np.exp(-1.702 * h))
  else:  # exact GELU
    h = 0.5 * h * (1 + np.vectorize(math.erf)(h / np.sqrt(2)))
  return x + h @ p("mlp.c_proj.weight").T + p("mlp.c_proj.bias")


def reference(sd, ids, heads=H, act="quick_gelu"):
  """numpy float64 forward of the official layout -> (tokens, penultimate, pooled)."""
  sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  b, t = ids.shape
  x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][:t]
  depth = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
  causal = np.triu(np.full((t, t), -np.inf), 1)
  penult = x
  for i in range(depth):
    if i == depth - 1:
      penult = x
    x = resblock(x, lambda name: sd[f"transformer.resblocks.{i}.{name}"], heads, mask=causal, act=act)
  tokens = _ln(x, sd["ln_final.weight"], sd["ln_final.bias"])
  pooled = tokens[np.arange(b), ids.argmax(-1)] @ sd["text_projection"]
  return tokens, penult, pooled


def _to_hf(sd):
  """The same weights in HF transformers' CLIPModel names."""
  out = {"text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
         "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
         "text_model.embeddings.position_ids": np.arange(CTX)[None],
         "text_model.final_layer_norm.weight": sd["ln_final.weight"],
         "text_model.final_layer_norm.bias": sd["ln_final.bias"],
         "text_projection.weight": sd["text_projection"].T.copy(), "logit_scale": sd["logit_scale"]}
  for i in range(L):
    p, q = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
    for j, c in enumerate("qkv"):
      out[q + f"self_attn.{c}_proj.weight"] = sd[p + "attn.in_proj_weight"][j * W:(j + 1) * W].copy()
      out[q + f"self_attn.{c}_proj.bias"] = sd[p + "attn.in_proj_bias"][j * W:(j + 1) * W].copy()
    for a, bb in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                  ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
      out[q + bb + ".weight"], out[q + bb + ".bias"] = sd[p + a + ".weight"], sd[p + a + ".bias"]
  return out


def _ids():
  ids = np.zeros((2, CTX), np.int32)
  ids[0, :5] = [V - 2, 3, 7, 11, V - 1]  # SOT, text, EOT, zero padding
  ids[1, :3] = [V - 2, 20, V - 1]
  return ids


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  sd = official_state()
  path = tmp_path_factory.mktemp("clip") / "open_clip.safetensors"
  save_file(sd, str(path))
  cfg, params = C.load(path, {"num_heads": H})
  return sd, cfg, params


def test_open_clip_layout_matches_the_numpy_official_forward(converted):
  sd, cfg, params = converted
  assert cfg == dict(width=W, depth=L, num_heads=H, vocab_size=V, context_length=CTX, embed_dim=D,
                     activation="quick_gelu")
  ids = _ids()
  out = jax.jit(T.features_fn(cfg))(params, jnp.asarray(ids))
  want = reference(sd, ids)
  for name, ref in zip(("tokens", "penultimate", "pooled"), want):
    assert out[name].shape == ref.shape and out[name].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out[name]), ref, atol=1e-4, err_msg=name)


def test_hf_layout_converts_to_the_same_parameters(converted, tmp_path):
  sd, _, params = converted
  path = tmp_path / "hf.safetensors"
  save_file(_to_hf(sd), str(path))
  cfg, hf_params = C.load(path, {"num_heads": H})
  assert cfg["depth"] == L and cfg["embed_dim"] == D
  for (p, a), (_, b) in zip(nnx.to_flat_state(params), nnx.to_flat_state(hf_params)):
    np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()), err_msg=str(p))


def test_causal_mask_keeps_the_prefix_independent_of_later_tokens(converted):
  _, cfg, params = converted
  fn = T.features_fn(cfg)
  a, b = _ids(), _ids()
  b[0, 5:] = [9, 9, 9]  # change only what follows EOT
  fa, fb = fn(params, jnp.asarray(a)), fn(params, jnp.asarray(b))
  np.testing.assert_array_equal(np.asarray(fa["tokens"][0, :5]), np.asarray(fb["tokens"][0, :5]))
  np.testing.assert_array_equal(np.asarray(fa["pooled"]), np.asarray(fb["pooled"]))
  assert not np.allclose(np.asarray(fa["tokens"][0, 5:]), np.asarray(fb["tokens"][0, 5:]))


def test_converter_refuses_missing_files_and_wrong_tensors(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    C.load(tmp_path / "absent.bin")
  sd = official_state()
  sd["transformer.resblocks.0.attn.extra"] = np.zeros(3, np.float32)
  del sd["ln_final.bias"]
  path = tmp_path / "bad.safetensors"
  save_file(sd, str(path))
  with pytest.raises(ValueError, match=r"missing keys \[ln_final.bias\].*unexpected"):
    C.load(path, {"num_heads": H})
  with pytest.raises(ValueError, match="not a multiple of 64"):
    C.load(path)


def test_quick_gelu_mlp_option():
  mlp = Mlp(4, 8, kind="quick_gelu", rngs=nnx.Rngs(0))
  x = jnp.linspace(-2, 2, 8).reshape(2, 4)
  h = x @ mlp.up.kernel.get_value() + mlp.up.bias.get_value()
  want = (h * jax.nn.sigmoid(1.702 * h)) @ mlp.down.kernel.get_value() + mlp.down.bias.get_value()
  np.testing.assert_allclose(np.asarray(jax.jit(lambda m, v: m(v))(mlp, x)), np.asarray(want),
                             atol=1e-6)
  with pytest.raises(ValueError, match="quick_gelu"):
    Mlp(4, 8, kind="relu", rngs=nnx.Rngs(0))


def test_model_refuses_bad_ids_and_config():
  model = T.make_model(dict(width=W, depth=1, num_heads=H, vocab_size=V, context_length=CTX,
                            embed_dim=D), rngs=nnx.Rngs(0))
  run = jax.jit(lambda m, ids: m(ids))  # the checks are on shapes and dtypes: they raise at trace
  assert run(model, jnp.zeros((1, 3), jnp.int32))["penultimate"].shape == (1, 3, W)
  with pytest.raises(ValueError, match="context_length"):
    run(model, jnp.zeros((1, CTX + 1), jnp.int32))
  with pytest.raises(ValueError, match=r"int \[B, T\]"):
    run(model, jnp.zeros((1, 3), jnp.float32))
  with pytest.raises(ValueError, match="unknown CLIPText config key"):
    T.make_model(dict(widht=3), rngs=nnx.Rngs(0))
  assert T.config_for("L-14")["width"] == 768


# ---- BPE

MERGES = ["h e", "l l", "he ll", "hell o</w>"]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
  path = tmp_path_factory.mktemp("bpe") / "bpe_simple_vocab_16e6.txt.gz"
  with gzip.open(path, "wb") as f:
    f.write(("#version: 0.2\n" + "\n".join(MERGES) + "\n").encode())
  return clip_bpe.CLIPTokenizer(path)


def test_bpe_vocabulary_layout(bpe):
  # 256 byte symbols, 256 with "</w>", one per merge, then SOT and EOT.
  assert bpe.vocab_size == 512 + len(MERGES) + 2
  assert (bpe.sot_id, bpe.eot_id) == (516, 517)
  assert bpe.encoder["!"] == 0 and bpe.encoder["!</w>"] == 256 and bpe.encoder["a</w>"] == 256 + 64
  assert [bpe.encoder[s] for s in ("he", "ll", "hell", "hello</w>")] == [512, 513, 514, 515]


def test_bpe_tokenizes_by_hand(bpe):
  # "hello": h e l l o</w> -> he l l o</w> -> he ll o</w> -> hell o</w> -> hello</w> (rank order).
  assert bpe.bpe("hello") == ["hello</w>"]
  # "hell": h e l l</w>: (l, l</w>) is no merge, so only "he" forms.
  assert bpe.bpe("hell") == ["he", "l", "l</w>"]
  ids = bpe.tokenize(["Hello  &amp;HELLO!", "a"], context_length=8)
  assert ids.dtype == np.int32 and ids.shape == (2, 8)
  amp = 256 + 5  # "&</w>": '&' is the 6th printable byte from '!'
  assert ids[0].tolist() == [516, 515, amp, 515, 256, 517, 0, 0]
  assert ids[1].tolist() == [516, 320, 517, 0, 0, 0, 0, 0]
  assert bpe.decode(ids[0]) == "hello & hello !"


def test_bpe_pattern_and_truncation(bpe):
  # contractions are their own pieces, digits one by one, punctuation runs together
  assert clip_bpe._PATTERN.findall("it's 42 ?!") == ["it", "'s", "4", "2", "?!"]
  ids = bpe.tokenize("hello hello hello hello", context_length=4)
  assert ids.tolist() == [[516, 515, 515, 517]]  # cut, EOT kept last
  with pytest.raises(ValueError, match="does not exist"):
    clip_bpe.CLIPTokenizer("/nonexistent/bpe.txt.gz")
  with pytest.raises(TypeError, match="text must be a str"):
    bpe.encode(3)
