"""Quantizers as pure jax.numpy functions.

Every quantizer module exposes `quantize(z, state_or_spec, *, rng=None, train=False) -> QuantizerOutput`
and `indices_to_codes(indices, state_or_spec)`. Math runs in float32 whatever the input dtype.
"""
from jaxtok.quantizers.base import QuantizerOutput

__all__ = ["QuantizerOutput"]
