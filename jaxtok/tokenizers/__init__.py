"""Image tokenizers (TiTok / One-D-Piece / TiTok-VAE, VQGAN, FlexTok) behind one functional API.

`build(config)` returns a `Tokenizer` whose `init`, `encode`, `decode` and `reconstruct` are pure
jitted functions of the parameters; model modules are imported lazily by config name.
"""
from jaxtok.tokenizers.api import EncodeOutput, Tokenizer, TrainOutput, build

__all__ = ["EncodeOutput", "Tokenizer", "TrainOutput", "build"]
