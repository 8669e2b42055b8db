r"""Encodes a folder of images to tokens, and decodes tokens back to PNGs.

  python tools/tokenize.py --config configs/titok.py:tiny --checkpoint /tmp/titok_tiny \
      --input photos/ --output /tmp/tok --num_tokens 4 --decode
  python tools/tokenize.py --checkpoint /tmp/titok_tiny --tokens /tmp/tok/tokens.npz --output /tmp/dec

Writes `<output>/tokens.npz` (tokens int32 [N, K] or float32 [N, K, D], names, config JSON, ...)
and with --decode `<output>/decoded/<name>.png` plus `<output>/decoded_grid.png`. Flags and
behaviour: jaxtok/eval/tokenize_cli.py (the code lives there; see below).

This file shares its name with the standard library's `tokenize`, and every script in tools/ runs
with tools/ first on sys.path, so `import tokenize` anywhere in such a process (inspect, linecache,
...) would find this file. Imported under that name, it therefore loads the standard library's
module and stands in for it; only run as a script (or imported under another name) is it the tool.
"""
import sys as _sys

if __name__ == "tokenize":
  import importlib.util as _util
  import os as _os
  import sysconfig as _sysconfig

  _spec = _util.spec_from_file_location(
      "tokenize", _os.path.join(_sysconfig.get_paths()["stdlib"], "tokenize.py"))
  _real = _util.module_from_spec(_spec)
  _sys.modules["tokenize"] = _real
  _spec.loader.exec_module(_real)
  globals().update({k: v for k, v in vars(_real).items() if not k.startswith("__")})
else:
  import os as _os

  _here = _os.path.dirname(_os.path.abspath(__file__))
  if __name__ == "__main__":
    # Keep the standard library's tokenize reachable in this process.
    _sys.path[:] = [p for p in _sys.path if _os.path.abspath(p or ".") != _here]
  if _os.path.dirname(_here) not in _sys.path:
    _sys.path.insert(0, _os.path.dirname(_here))
  from jaxtok.eval.tokenize_cli import FLAGS, main  # noqa: E402,F401

  if __name__ == "__main__":
    main(_sys.argv)
