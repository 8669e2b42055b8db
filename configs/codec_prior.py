"""`--config configs/codec_prior.py:ARG` for the tools: the config is `jaxtok.configs.codec_prior`."""
from jaxtok.configs.codec_prior import get_config  # noqa: F401
