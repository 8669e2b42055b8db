"""Instella-T2I's released binary autoencoder (`bae/ae_model.py BAE_Model`, HF amd/Instella-T2I
`bae/model.safetensors`) -> jaxtok `tokenizers.instella_bae.InstellaBAE` parameters.

Key map (official -> jaxtok; Linear weights [O, I] -> kernels [I, O], conv weights [O, I, kh, kw]
-> kernels [kh, kw, I, O], RMSNorm weight -> scale; {enc} = encoder / decoder towers):

  encoder.patch_embedder.weight [W, 3, p, p]          patch_embedder.kernel [p*p*3, W] ((py, px, c))
  encoder.latent_tokens [1, K, W]                     latent_tokens [K, W]
  {enc}.transformer_blocks.i.input_layernorm          {enc}.transformer_blocks.i.norm1
  {enc}.transformer_blocks.i.post_attention_layernorm {enc}.transformer_blocks.i.norm2
  {enc}.transformer_blocks.i.attn.{q,k,v}_proj        {enc}.transformer_blocks.i.attn.qkv [W, 3, H, E]
  {enc}.transformer_blocks.i.attn.o_proj              {enc}.transformer_blocks.i.attn.out [H, E, W]
  {enc}.transformer_blocks.i.attn.norm_{q,k}          {enc}.transformer_blocks.i.attn.{q,k}_norm
  {enc}.transformer_blocks.i.mlp.{gate,up,down}_proj  {enc}.transformer_blocks.i.mlp.{gate,up,down}
  encoder.down_layers.j.conv / decoder.up_layers.j.conv   {enc}.resize_layers.j.conv
  encoder.norm_out / encoder.proj_out                 encoder_norm / encoder_proj
  quantizer.proj.0 / quantizer.embed [n, W]           bit_proj / bit_embed
  decoder.input_layer.0 / .1                          decoder_in_norm / decoder_in
  decoder.mask_tokens [1, 1, Wd]                      mask_token [Wd]
  decoder.norm_out / to_pixel                         decoder_norm / to_pixel
  decoder.repa_proj.*                                 dropped: the training-only REPA projector
                                                      (present only when trained with use_repa)

The heads are read off the q/k norms (their size is the head dim). Not in the weights: the image
size, the RoPE axes split, the blocks after which the grid is resized, and the RoPE scale; they come
from the config (RELEASED: the release's bae_config.py and bae_scale 1024, 512 px as test_diff.py's
default). The released file itself was not available here; the layout is checked against the
release's classes (tests/convert/test_instella.py).
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np

from jaxtok.convert import common

# configs/bae_config.py (num_latent_tkns 128, codebook_size 64) with the generators' bae_scale 1024
# (RoPE scale 1024 / 16) at test_diff.py's default 512 px (it also offers 768 and 1024).
RELEASED: dict[str, dict[str, Any]] = {
    "instella_t2i_bae": dict(name="instella_bae", image_size=512, patch_size=16,
                             num_latent_tokens=128, bits=64, encoder_width=768, encoder_depth=12,
                             encoder_heads=12, decoder_width=1024, decoder_depth=16,
                             decoder_heads=16, downsample_idx=(7,), upsample_idx=(7,),
                             axes_dim=(8, 28, 28), rope_scale=64.0),
}

_DROPPED = re.compile(r"^decoder\.repa_proj\..+$")
_RENAMES = (  # (official pattern, jaxtok replacement); first match wins
    (r"^(encoder|decoder)\.transformer_blocks\.(\d+)\.input_layernorm\.weight$",
     r"\1.transformer_blocks.\2.norm1.scale"),
    (r"^(encoder|decoder)\.transformer_blocks\.(\d+)\.post_attention_layernorm\.weight$",
     r"\1.transformer_blocks.\2.norm2.scale"),
    (r"^(encoder|decoder)\.transformer_blocks\.(\d+)\.attn\.norm_(q|k)\.weight$",
     r"\1.transformer_blocks.\2.attn.\3_norm.scale"),
    (r"^(encoder|decoder)\.transformer_blocks\.(\d+)\.mlp\.(gate|up|down)_proj\.weight$",
     r"\1.transformer_blocks.\2.mlp.\3.weight"),
    (r"^encoder\.down_layers\.(\d+)\.conv\.", r"encoder.resize_layers.\1.conv."),
    (r"^decoder\.up_layers\.(\d+)\.conv\.", r"decoder.resize_layers.\1.conv."),
    (r"^encoder\.norm_out\.weight$", "encoder_norm.scale"),
    (r"^encoder\.proj_out\.", "encoder_proj."),
    (r"^quantizer\.proj\.0\.", "bit_proj."),
    (r"^decoder\.input_layer\.0\.weight$", "decoder_in_norm.scale"),
    (r"^decoder\.input_layer\.1\.", "decoder_in."),
    (r"^decoder\.norm_out\.weight$", "decoder_norm.scale"),
    (r"^to_pixel\.", "to_pixel."),
)
_ATTN = re.compile(r"^(encoder|decoder)\.transformer_blocks\.(\d+)\.attn\.q_proj\.weight$")


def _tensor(name: str, value: np.ndarray) -> tuple[str, np.ndarray]:
  """A renamed tensor in jaxtok's layout: `.weight` of a Linear / conv -> `.kernel`."""
  if not name.endswith(".weight"):
    return name, value
  name = name[:-len("weight")] + "kernel"
  return name, value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T


def _attention(flat: Mapping[str, np.ndarray], out: dict) -> set[str]:
  """Fused qkv [W, 3, H, E] and out [H, E, W] of every block (H from the q norm's size E)."""
  used = set()
  for key in flat:
    m = _ATTN.match(key)
    if not m:
      continue
    p = f"{m.group(1)}.transformer_blocks.{m.group(2)}.attn."
    e = int(np.shape(flat[p + "norm_q.weight"])[0])
    ws = [np.asarray(flat[p + f"{n}_proj.weight"]) for n in "qkv"]  # [H*E, W] each
    width = ws[0].shape[1]
    out[p + "qkv"] = np.stack([w.T.reshape(width, -1, e) for w in ws], axis=1)
    wo = np.asarray(flat[p + "o_proj.weight"])  # [W, H*E]
    out[p + "out"] = wo.T.reshape(-1, e, wo.shape[0])
    used |= {p + f"{n}_proj.weight" for n in "qkvo"}
  return used


def convert(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Official BAE_Model state dict -> {jaxtok name: array}. Unknown keys pass through under their
  own names so that `common.fill_state` refuses them by name; decoder.repa_proj.* is dropped."""
  out: dict[str, np.ndarray] = {}
  used = _attention(flat, out)
  for key, value in flat.items():
    value = np.asarray(value)
    if key in used or _DROPPED.match(key):
      continue
    if key == "encoder.patch_embedder.weight":  # [W, C, p, p] -> [(py, px, c), W] (`vit.patchify`)
      out["patch_embedder.kernel"] = value.transpose(2, 3, 1, 0).reshape(-1, value.shape[0])
    elif key == "encoder.patch_embedder.bias":
      out["patch_embedder.bias"] = value
    elif key == "encoder.latent_tokens":
      out["latent_tokens"] = value.reshape(value.shape[-2:])
    elif key == "decoder.mask_tokens":
      out["mask_token"] = value.reshape(-1)
    elif key == "quantizer.embed":
      out["bit_embed"] = value
    else:
      for pattern, repl in _RENAMES:
        if re.match(pattern, key):
          name, value = _tensor(re.sub(pattern, repl, key), value)
          break
      else:
        name = key  # reported as unexpected by the shape check
      out[name] = value
  return out


def infer_config(flat: Mapping[str, np.ndarray], *, image_size: int = 512) -> dict[str, Any]:
  """A jaxtok config read off the shapes: widths, depths, heads (q-norm size), token count, bits,
  patch size; the resize positions, RoPE axes and scale are the release's (RELEASED), which must fit
  (ValueError from the model otherwise)."""
  try:
    def depth(tower):
      return len({k.split(".")[2] for k in flat if k.startswith(f"{tower}.transformer_blocks.")})

    def heads(tower):
      width = int(np.shape(flat[f"{tower}.transformer_blocks.0.attn.q_proj.weight"])[1])
      return width, width // int(np.shape(flat[f"{tower}.transformer_blocks.0.attn.norm_q.weight"])[0])

    enc_w, enc_h = heads("encoder")
    dec_w, dec_h = heads("decoder")
    cfg = dict(RELEASED["instella_t2i_bae"], image_size=image_size,
               patch_size=int(np.shape(flat["encoder.patch_embedder.weight"])[-1]),
               num_latent_tokens=int(np.shape(flat["encoder.latent_tokens"])[1]),
               bits=int(np.shape(flat["quantizer.embed"])[0]), encoder_width=enc_w,
               encoder_heads=enc_h, encoder_depth=depth("encoder"), decoder_width=dec_w,
               decoder_heads=dec_h, decoder_depth=depth("decoder"))
  except (KeyError, IndexError) as e:
    raise ValueError(f"not an Instella-T2I autoencoder state dict (no tensor {e}); keys start with "
                     f"{sorted({k.split('.')[0] for k in flat})}") from None
  return cfg


def load(path: str | os.PathLike, config: Mapping[str, Any] | str | None = None):
  """(jaxtok config, nnx.State of an `InstellaBAE`) from a released autoencoder file (safetensors,
  or a torch file read weights_only).

  config: a RELEASED name ("instella_t2i_bae"), a jaxtok config (mapping, JSON string or file), or
  None (read off the shapes, module docstring). Raises ValueError naming every missing, unexpected
  or mis-shaped tensor.
  """
  from jaxtok.tokenizers import api
  flat, _ = common.read_checkpoint(path)
  cfg = common.config_arg(config, RELEASED) if config is not None else infer_config(flat)
  cfg = dict(cfg, name="instella_bae")
  tok = api.build(cfg)
  return cfg, common.fill_state(tok.abstract_params(), convert(flat), source=os.fspath(path))
