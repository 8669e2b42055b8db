"""Text tokenizers for text-conditioned models (CLIP's byte-level BPE, SentencePiece unigram models)
and the captions -> CLIP text features encoder."""
