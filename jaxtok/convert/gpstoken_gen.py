"""GPSToken's released generator (xtudbxk/GPSToken 372231d `models/sit_models.py` "SiT-XL/2-gs", as
`inference_generator.py` builds and loads it) -> `generators.gpstoken_gen.GPSTokenGenerator`, and the
release's layout bank (`initg.pickle`) -> a converted directory's layouts.npy / labels.npy.

The release stores the EMA weights under "ema_model." (inference_generator.py keeps only those and
strips the prefix); a file holding such keys is read that way, any other is taken as a plain SiT
state dict. Key map (Linear [O, I] -> kernel [I, O]; i = block):

  x_embedder.proj [W, D, 1, 1] (+ bias)          x_embed.kernel [D, W] (a 1x1 patch conv = Linear)
  t_embedder.mlp.0 / .2                          time_fc1 / time_fc2
  y_embedder.embedding_table [K + 1, W]          class_embed.embedding (the last row: the null class)
  cond_embedder.0 / .2                           cond_fc1 / cond_fc2 (the layout embedder, 5 -> W -> W)
  blocks.i.attn.qkv [3W, W] (+ bias)             blocks.blocks.i.attn.qkv [W, 3, H, E] (+ qkv_bias)
  blocks.i.attn.proj                             blocks.blocks.i.attn.out [H, E, W] (+ out_bias)
  blocks.i.mlp.fc1 / fc2                         blocks.blocks.i.mlp.up / down
  blocks.i.adaLN_modulation.1 [6W, W]            blocks.blocks.i.ada [W, 6W], the six chunks reordered
                                                 from SiT's (shift, scale, gate)_msa, (shift, scale,
                                                 gate)_mlp to `nn.Block`'s (gate_msa, gate_mlp,
                                                 shift_msa, scale_msa, shift_mlp, scale_mlp)
  final_layer.adaLN_modulation.1 [2W, W]         final_ada (SiT's (shift, scale) is already the order
                                                 the generator splits it in: no reorder)
  final_layer.linear [2D or D, W]                final_out
  pos_embed [1, S, W]                            dropped: the release's forward adds it only without a
                                                 layout, and it always passes one (its S is read)

The blocks are RAR's DiT layout (`convert.rar`'s block map is reused). Sizes are read off the
shapes: width, token dim D, depth, MLP ratio, classes (table rows - 1), learn_sigma (2 D outputs),
tokens S (pos_embed); the head count is not in the tensors: SiT's sizes give it by width (XL 1152:
16, S 384: 6), other widths need a config. A given config is checked against those sizes (ValueError
naming the tensor). The converted config uses the release's normalisation constants (stats
"released"; they fit D = 21 only).

The released files (OneDrive / HF xtudbxk/GPSToken: `generator.safetensors`, `initg.pickle`) were not
available here; parity is checked on a tiny re-randomised official SiT (tests/convert/
test_gpstoken_gen.py, tests/fixtures/official/make_gpstoken_gen_fixture.py.txt).
"""
from __future__ import annotations

import io
import os
import pickle
import re
from typing import Any, Mapping

import numpy as np

from jaxtok.convert import common
from jaxtok.convert.rar import dit_block  # DiT block names: SiT's blocks are the same
from jaxtok.tokenizers.gpstoken import GEOMETRY

EMA = "ema_model."
# SiT_models of the release with patch size 1 ("-gs"): name -> (width, depth, heads).
SIT_SIZES = {"SiT-XL/2-gs": (1152, 28, 16), "SiT-S/2-gs": (384, 12, 6)}
_HEADS = {w: h for w, _, h in SIT_SIZES.values()}
_SIZE_FIELDS = ("token_dim", "seq_len", "num_classes", "width", "depth", "mlp_ratio", "learn_sigma")


def _gen(width: int, depth: int, heads: int, **kw) -> dict[str, Any]:
  return dict(dict(name="gpstoken_gen", token_dim=21, seq_len=128, num_classes=1000, width=width,
                   depth=depth, heads=heads, mlp_ratio=4.0, class_dropout=0.1, learn_sigma=True,
                   stats="released"), **kw)


# configs/gpstoken_generator.yaml: SiT-XL/2-gs over GPSToken-M128 (128 tokens of 5 + 16), 1000 classes.
RELEASED: dict[str, dict[str, Any]] = {"gpstoken_gen_xl": _gen(*SIT_SIZES["SiT-XL/2-gs"])}
ALIASES = {"generator.safetensors": "gpstoken_gen_xl"}


def ema_weights(flat: Mapping[str, Any]) -> dict[str, Any]:
  """The release's EMA tensors with the prefix stripped (what inference_generator.py loads), or flat
  itself when it holds no "ema_model." key."""
  if not any(k.startswith(EMA) for k in flat):
    return dict(flat)
  return {k[len(EMA):]: v for k, v in flat.items() if k.startswith(EMA)}


def from_official(official: Mapping[str, Any]) -> dict[str, Any]:
  """A jaxtok config from the release's configs/gpstoken_generator.yaml (its `model` block: name,
  latent_size, num_classes, in_channels)."""
  try:
    model = dict(official["model"])
    width, depth, heads = SIT_SIZES[model["name"]]
    return _gen(width, depth, heads, token_dim=int(model["in_channels"]),
                seq_len=int(model["latent_size"]), num_classes=int(model["num_classes"]))
  except KeyError as e:
    raise ValueError(f"an official GPSToken generator config needs model.name (one of "
                     f"{sorted(SIT_SIZES)}), model.latent_size, model.num_classes and "
                     f"model.in_channels; missing or unknown: {e}") from None


def _shape(flat: Mapping[str, Any], key: str, ndim: int) -> tuple[int, ...]:
  if key not in flat:
    raise ValueError(f"not a GPSToken generator (SiT-gs) state dict: no tensor {key!r}; keys start "
                     f"with {sorted({k.split('.')[0] for k in flat})}")
  shape = tuple(int(d) for d in np.shape(flat[key]))
  if len(shape) != ndim:
    raise ValueError(f"{key} must have {ndim} dimensions, got shape {list(shape)}")
  return shape


def sizes(flat: Mapping[str, Any]) -> dict[str, Any]:
  """The sizes the tensors show ({token_dim, seq_len, num_classes, width, depth, mlp_ratio,
  learn_sigma}; seq_len only with pos_embed) of an official state dict (EMA prefix stripped)."""
  width, token_dim = _shape(flat, "x_embedder.proj.weight", 4)[:2]
  cond = _shape(flat, "cond_embedder.0.weight", 2)
  if cond != (width, GEOMETRY):
    raise ValueError(f"cond_embedder.0.weight must be [{width}, {GEOMETRY}] (the layout's Gaussians), "
                     f"got {list(cond)}")
  depth = len({k.split(".")[1] for k in flat if re.match(r"blocks\.\d+\.", k)})
  out = _shape(flat, "final_layer.linear.weight", 2)[0]
  if out not in (token_dim, 2 * token_dim):
    raise ValueError(f"final_layer.linear.weight has {out} outputs, expected {token_dim} or "
                     f"{2 * token_dim} (learn_sigma) for {token_dim} input channels")
  found = dict(token_dim=token_dim, width=width, depth=depth,
               num_classes=_shape(flat, "y_embedder.embedding_table.weight", 2)[0] - 1,
               mlp_ratio=_shape(flat, "blocks.0.mlp.fc1.weight", 2)[0] / width,
               learn_sigma=out == 2 * token_dim)
  if "pos_embed" in flat:
    found["seq_len"] = _shape(flat, "pos_embed", 3)[1]
  return found


def infer_config(flat: Mapping[str, Any]) -> dict[str, Any]:
  """A config read off the shapes (module doc); ValueError for a width whose head count is unknown."""
  found = sizes(ema_weights(flat))
  if found["width"] not in _HEADS:
    raise ValueError(f"the head count is not in the weights and width {found['width']} is none of "
                     f"SiT's ({_HEADS}); pass a config with heads")
  width = found["width"]
  return _gen(width, found["depth"], _HEADS[width],
              **{k: v for k, v in found.items() if k not in ("width", "depth")})


def check_config(flat: Mapping[str, Any], config: Mapping[str, Any]) -> None:
  """ValueError naming the first tensor whose size disagrees with config (EMA prefix stripped)."""
  found = sizes(flat)
  where = dict(token_dim="x_embedder.proj.weight", width="x_embedder.proj.weight",
               seq_len="pos_embed", num_classes="y_embedder.embedding_table.weight",
               depth="blocks.*", mlp_ratio="blocks.0.mlp.fc1.weight",
               learn_sigma="final_layer.linear.weight")
  for k in _SIZE_FIELDS:
    if k in found and k in config and found[k] != type(found[k])(config[k]):
      raise ValueError(f"{where[k]}: the weights have {k} = {found[k]}, the config {config[k]}")
  heads = int(config.get("heads", 0))
  if heads <= 0 or found["width"] % heads:
    raise ValueError(f"config heads must divide the width {found['width']}, got {heads}")


_RENAMES = {"x_embedder.proj": "x_embed", "t_embedder.mlp.0": "time_fc1",
            "t_embedder.mlp.2": "time_fc2", "cond_embedder.0": "cond_fc1",
            "cond_embedder.2": "cond_fc2", "final_layer.adaLN_modulation.1": "final_ada",
            "final_layer.linear": "final_out"}


def convert(flat: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Official SiT-gs state dict (with or without the "ema_model." prefix) -> {jaxtok name: array}
  for `config`, after `check_config`. Unknown keys pass through under their own names so that
  `common.fill_state` refuses them by name."""
  flat = ema_weights(flat)
  check_config(flat, config)
  heads, out = int(config["heads"]), {}
  for key, v in flat.items():
    v = np.asarray(v)
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key)
    stem, _, kind = key.rpartition(".")
    if m:
      out.update(dit_block(f"blocks.blocks.{m.group(1)}.", m.group(2), m.group(3), v, heads))
    elif key == "pos_embed":
      continue  # module doc: unused by the released forward
    elif key == "y_embedder.embedding_table.weight":
      out["class_embed.embedding"] = v
    elif stem in _RENAMES and kind in ("weight", "bias"):
      if kind == "weight" and v.ndim == 4:  # the 1x1 patch conv [W, D, 1, 1]
        v = v[:, :, 0, 0]
      out[f"{_RENAMES[stem]}.{'kernel' if kind == 'weight' else 'bias'}"] = (
          v.T if kind == "weight" else v)
    else:
      out[key] = v  # unexpected: reported by fill_state
  return out


# resolve_config(config, flat=None), abstract_params(config), build(config, params=None) and
# load(path, config=None) -> (config, nnx.State of a GPSTokenGenerator): see common.GeneratorConverter.
_API = common.GeneratorConverter(
    "jaxtok.generators.gpstoken_gen", "gpstoken_gen", released=RELEASED, aliases=ALIASES,
    infer=infer_config, from_official=from_official, convert=convert)
resolve_config, abstract_params, build, load = (
    _API.resolve_config, _API.abstract_params, _API.build, _API.load)


# ----------------------------------------------------------------------------- the layout bank


class _ArraysOnly(pickle.Unpickler):
  """Unpickles containers of numpy arrays only: any other global (code a pickle could run) is
  refused by name."""

  _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
              ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
              ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict"),
              ("collections", "defaultdict"), ("builtins", "list")}  # defaultdict(list)

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise ValueError(f"initg pickle: refusing global {module}.{name} (only numpy arrays in "
                       f"dicts / lists are read)")
    return super().find_class(module, name)


def read_initg(path: str | os.PathLike) -> dict[int, list[np.ndarray]]:
  """The release's initg.pickle: {class id: [layout [S, >= 5] per example]} (inference_generator.py
  pops the last of a class's list per sample and keeps the first 5 channels)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"initg file {path!r} does not exist")
  with open(path, "rb") as f:
    data = _ArraysOnly(io.BytesIO(f.read())).load()
  if isinstance(data, (list, tuple)):
    data = dict(enumerate(data))
  if not isinstance(data, Mapping):
    raise ValueError(f"initg file {path!r} must hold {{class: [layouts]}}, got {type(data).__name__}")
  return {int(k): [np.asarray(a) for a in v] for k, v in data.items()}


def bank_arrays(initg: Mapping[int, list[np.ndarray]], config: Mapping[str, Any]):
  """(layouts float32 [N, S, 5], labels int32 [N]) of an initg mapping, classes in increasing order,
  each class's list in its order: `generators.gpstoken_gen.LayoutBank` pops the last row of a class
  first, as the release pops the last list entry. ValueError for a layout that is not [S, >= 5]."""
  seq, layouts, labels = int(config["seq_len"]), [], []
  for cls in sorted(initg):
    for i, g in enumerate(initg[cls]):
      if g.ndim != 2 or g.shape[0] != seq or g.shape[1] < GEOMETRY:
        raise ValueError(f"initg[{cls}][{i}] must be [{seq}, >= {GEOMETRY}], got {list(g.shape)}")
      layouts.append(np.asarray(g[:, :GEOMETRY], np.float32))
      labels.append(cls)
  if not layouts:
    raise ValueError("the initg file holds no layouts")
  return np.stack(layouts), np.asarray(labels, np.int32)


def write_bank(out_dir: str | os.PathLike, initg_path: str | os.PathLike,
               config: Mapping[str, Any]) -> int:
  """Writes out_dir/layouts.npy and out_dir/labels.npy from the release's initg.pickle (the bank a
  converted directory samples from: tools/sample.py); returns the number of layouts."""
  layouts, labels = bank_arrays(read_initg(initg_path), config)
  if int(config.get("num_classes", 0)) > 0 and labels.max() >= int(config["num_classes"]):
    raise ValueError(f"initg holds class {int(labels.max())}, the generator has "
                     f"{config['num_classes']} classes")
  from jaxtok.generators import gpstoken_gen  # pylint: disable=g-import-not-at-top
  np.save(os.path.join(os.fspath(out_dir), f"{gpstoken_gen.LAYOUTS}.npy"), layouts)
  np.save(os.path.join(os.fspath(out_dir), "labels.npy"), labels)
  return len(labels)
