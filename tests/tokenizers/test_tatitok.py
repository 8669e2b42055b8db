"""TA-TiTok: converter parity, the decoder's use of the text, and a tiny training run.

Parity fixture: the official tiny TiTok files (tests/fixtures/official/titok_{vq,vae}.safetensors,
saved by the official code with their outputs) plus random `decoder.text_guidance_*` tensors make a
TA-TiTok state dict of the official layout. Expected pixels come from a numpy forward of the
official `TATiTokDecoder` written in this file; that reference is first checked against the official
TiTok decoder outputs stored with the fixture (the same forward without text).
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxtok.convert import common
from jaxtok.convert import tatitok as C
from jaxtok.tokenizers import api
from jaxtok.tokenizers import tatitok as T
from tests.nn.test_clip_text import _ln, resblock

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "official")
TINY = dict(image_size=32, patch_size=8, encoder_width=32, encoder_depth=2, encoder_heads=2,
            decoder_width=32, decoder_depth=2, decoder_heads=2, num_latent_tokens=6, token_size=4,
            codebook_size=16, use_l2_norm=True)
S, TEXT_DIM = 5, 12


def _text_tensors(seed=0):
  rng = np.random.default_rng(seed)
  return {"decoder.text_guidance_proj.weight": rng.normal(0, 0.3, (32, TEXT_DIM)).astype(np.float32),
          "decoder.text_guidance_proj.bias": rng.normal(0, 0.3, 32).astype(np.float32),
          "decoder.text_guidance_positional_embedding": rng.normal(0, 0.2, (S, 32)).astype(np.float32)}


def reference_decoder(sd, codes, text=None, heads=2, patch=8):
  """numpy float64 forward of the official TATiTokDecoder (TiTokDecoder when text is None):
  codes [B, K, D] -> images [B, H, W, 3] (channels-last)."""
  sd = {k[len("decoder."):]: np.asarray(v, np.float64) for k, v in sd.items()
        if k.startswith("decoder.")}
  b, k, _ = codes.shape
  x = codes @ sd["decoder_embed.weight"].T + sd["decoder_embed.bias"]
  x = x + sd["latent_token_positional_embedding"][:k]
  g2 = sd["positional_embedding"].shape[0] - 1
  w = x.shape[-1]
  prefix = np.concatenate([np.broadcast_to(sd["class_embedding"], (b, 1, w)),
                           np.broadcast_to(sd["mask_token"].reshape(1, 1, w), (b, g2, w))], 1)
  parts = [prefix + sd["positional_embedding"], x]
  if text is not None:
    parts.append(text @ sd["text_guidance_proj.weight"].T + sd["text_guidance_proj.bias"]
                 + sd["text_guidance_positional_embedding"])
  x = _ln(np.concatenate(parts, 1), sd["ln_pre.weight"], sd["ln_pre.bias"])
  depth = len({n.split(".")[1] for n in sd if n.startswith("transformer.")})
  for i in range(depth):
    x = resblock(x, lambda n: sd[f"transformer.{i}.{n}"], heads)
  x = _ln(x[:, 1:1 + g2], sd["ln_post.weight"], sd["ln_post.bias"])
  g = int(round(g2**0.5))
  y = x @ sd["ffn.0.weight"][:, :, 0, 0].T + sd["ffn.0.bias"]  # [B, G, p*p*3], channels (p1 p2 c)
  y = y.reshape(b, g, g, patch, patch, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * patch, g * patch, 3)
  pad = np.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)))
  wc = sd["conv_out.weight"]  # [O, I, 3, 3]
  out = np.zeros_like(y)
  for dy in range(3):
    for dx in range(3):
      out += pad[:, dy:dy + g * patch, dx:dx + g * patch] @ wc[:, :, dy, dx].T
  return out + sd["conv_out.bias"]


@functools.lru_cache(maxsize=None)
def _official(kind):
  flat, _ = common.read_checkpoint(os.path.join(FIXTURES, f"titok_{kind}.safetensors"))
  with np.load(os.path.join(FIXTURES, f"titok_{kind}_outputs.npz")) as f:
    io = {k: f[k] for k in f.files}
  return dict(flat), io


@functools.lru_cache(maxsize=None)
def _converted(kind, tmp="/tmp"):
  flat, io = _official(kind)
  flat = dict(flat, **_text_tensors())
  path = os.path.join(tmp, f"jaxtok_test_tatitok_{kind}_{os.getpid()}.safetensors")
  save_file(flat, path)
  cfg = dict(TINY, name="tatitok", quantizer="vq" if kind == "vq" else "vae",
             text_context_length=S, text_embed_dim=TEXT_DIM)
  cfg, params = C.load(path, cfg)
  os.remove(path)
  tok = api.build(cfg)
  return flat, io, tok, params


def _text(seed, b=2):
  return np.random.default_rng(seed).normal(0, 1, (b, S, TEXT_DIM)).astype(np.float32)


def test_numpy_reference_reproduces_the_official_titok_decoder():
  flat, io = _official("vq")
  np.testing.assert_allclose(reference_decoder(flat, io["codes"].astype(np.float64)), io["decoded"],
                             atol=1e-4)


@pytest.mark.parametrize("kind", ["vq", "vae"])
def test_converted_tatitok_matches_the_official_forward(kind):
  flat, io, tok, params = _converted(kind)
  model = tok.model(params)
  images = jnp.asarray(io["images"])
  enc = model.encode(images)
  if kind == "vq":  # the encoder is TiTok's: the official tokens
    np.testing.assert_array_equal(np.asarray(enc.tokens), io["tokens"])
    codes = io["codes"]
  else:
    np.testing.assert_allclose(np.asarray(enc.tokens), io["mean"], atol=1e-4)
    codes = io["mean"]
  text = _text(1)
  want = reference_decoder(flat, codes.astype(np.float64), text.astype(np.float64))
  got = T.decode_fn(tok)(params, enc.tokens, jnp.asarray(text))
  assert got.shape == (2, 32, 32, 3) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)


def test_decoder_uses_the_text_and_refuses_to_decode_without_it():
  _, io, tok, params = _converted("vq")
  decode = T.decode_fn(tok)
  tokens = jnp.asarray(io["tokens"])
  a = np.asarray(decode(params, tokens, jnp.asarray(_text(1))))
  b = np.asarray(decode(params, tokens, jnp.asarray(_text(2))))
  # another caption, another image (the fixture's small random weights move pixels by ~1e-3); the
  # same caption decodes identically
  assert np.max(np.abs(a - b)) > 2e-4
  np.testing.assert_array_equal(a, np.asarray(decode(params, tokens, jnp.asarray(_text(1)))))
  model = tok.model(params)
  with pytest.raises(ValueError, match="text_features"):
    model.decode(tokens)
  with pytest.raises(ValueError, match=r"text_features must be float \[B, 5, 12\]"):
    model.decode(tokens, jnp.zeros((2, 4, TEXT_DIM)))
  with pytest.raises(ValueError, match="batch size 2"):
    model.decode(tokens, jnp.zeros((3, S, TEXT_DIM)))
  with pytest.raises(ValueError, match="unknown TA-TiTok config key"):
    api.build(dict(TINY, name="tatitok", text_len=3))


def test_released_configs_and_refusal_of_a_plain_titok_file(tmp_path):
  cfg = C.resolve_config("tokenizer_tatitok_bl32_vae")
  assert cfg == dict(name="tatitok", image_size=256, patch_size=16, encoder_size="B",
                     decoder_size="L", num_latent_tokens=32, token_size=16, quantizer="vae",
                     legacy_reshape=False, decoder_head="pixels", text_context_length=77,
                     text_embed_dim=768)
  assert C.resolve_config("tokenizer_tatitok_bl128_vq")["codebook_size"] == 8192
  assert sorted(C.RELEASED) == sorted(f"turkeyju/tokenizer_tatitok_{n}" for n in (
      "bl32_vq", "bl64_vq", "bl128_vq", "bl32_vae", "bl64_vae", "sl128_vae"))
  path = tmp_path / "titok.safetensors"
  save_file(_official("vq")[0], str(path))
  with pytest.raises(ValueError, match="not a TA-TiTok state dict"):
    C.load(path)


def test_captioned_photo_batches_follow_the_crops():
  from jaxtok.data import photo_captions, photos
  train, captions = photo_captions.captioned_photos()
  assert len(train) == len(captions) and "a photo of an astronaut" in captions
  table = np.arange(len(train), dtype=np.float32)[:, None, None] * np.ones((1, 2, 3), np.float32)
  data = photo_captions.CaptionedCrops(train, table, image_size=16, global_batch=6, seed=3)
  plain = photos.PhotoCrops(train, image_size=16, global_batch=6, seed=3)
  batch = next(data)
  np.testing.assert_array_equal(batch["image"], next(plain))  # the same crops as PhotoCrops
  np.testing.assert_array_equal(batch["text_features"][:, 0, 0], batch["caption"])
  # each crop comes from the photo whose caption it carries
  for img, j in zip(batch["image"], batch["caption"]):
    u8 = np.round(img * 255).astype(np.uint8)
    found = False
    for s in range(1, 5):
      p = train[j][::s, ::s]
      for cand in (u8, u8[:, ::-1]):
        hits = np.argwhere(np.all(p[:p.shape[0] - 15, :p.shape[1] - 15] == cand[0, 0], axis=-1))
        found |= any(np.array_equal(p[y:y + 16, x:x + 16], cand) for y, x in hits[:200])
    assert found
  with pytest.raises(ValueError, match="one row per photo"):
    photo_captions.CaptionedCrops(train, table[:2], image_size=16, global_batch=6, seed=3)


@pytest.mark.slow
def test_tiny_config_trains_on_captioned_photos_and_the_loss_falls():
  """configs/tatitok.py:tiny through train.step with batches {"image", "text_features"} from the
  bundled photos and a tiny random CLIP: one fixed batch, 20 steps, the loss falls."""
  from jaxtok import sharding as shd
  from jaxtok.configs.tatitok import get_config
  from jaxtok.data import photo_captions
  from jaxtok.train import optim, state as state_lib, step as step_lib
  c = get_config("tiny")
  data = photo_captions.training_data(c, seed=0)
  batch = next(data)
  assert batch["text_features"].shape == (8, 8, 16)
  tok = api.build(c.model)
  tx = optim.optimizer_from_config(c.optim, c.total_steps)
  init_fn = state_lib.make_init_fn(tok, tx)
  mesh = shd.make_mesh((("data", 1), ("fsdp", 1), ("tensor", 1)), jax.devices()[:1])
  state, shardings, _ = state_lib.init_train_state(init_fn, jax.random.key(0), mesh)
  step = step_lib.make_train_step(tok, c.loss, tx, state_shardings=shardings)
  losses = []
  for _ in range(c.total_steps):
    state, metrics = step(state, {k: batch[k] for k in ("image", "text_features")}, jax.random.key(1))
    losses.append(float(metrics["loss"]))
  assert np.isfinite(losses).all() and np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses
