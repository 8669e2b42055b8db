"""`--config configs/token_shuffle_vqgan.py:ARG` for the tools: the config is `jaxtok.configs.token_shuffle_vqgan`."""
from jaxtok.configs.token_shuffle_vqgan import get_config  # noqa: F401
