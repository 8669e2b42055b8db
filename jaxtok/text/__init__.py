"""Text tokenizers for text-conditioned models (CLIP's byte-level BPE)."""
