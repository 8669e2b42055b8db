r"""Encodes a folder of images to tokens, and decodes tokens back to PNGs.

  python tools/tokenize_images.py --config configs/titok.py:tiny --checkpoint /tmp/titok_tiny \
      --input photos/ --output /tmp/tok --num_tokens 4 --decode
  python tools/tokenize_images.py --checkpoint /tmp/titok_tiny --tokens /tmp/tok/tokens.npz --output /tmp/dec

Writes `<output>/tokens.npz` (tokens int32 [N, K] or float32 [N, K, D], names, config JSON, ...)
and with --decode `<output>/decoded/<name>.png` plus `<output>/decoded_grid.png`. Flags and
behaviour: jaxtok/eval/tokenize_cli.py.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxtok.eval.tokenize_cli import FLAGS, main  # noqa: E402,F401

if __name__ == "__main__":
  main(sys.argv)
