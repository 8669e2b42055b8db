"""jaxtok: image tokenizers, quantizers and token generators in JAX/Flax NNX."""

__version__ = "0.1.0"
