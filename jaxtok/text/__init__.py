"""Text tokenizers for text-conditioned models (CLIP's byte-level BPE, SentencePiece unigram models,
HF tokenizer.json byte-level BPE) and the captions -> CLIP text features encoder."""
