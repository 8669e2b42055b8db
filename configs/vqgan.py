"""`--config configs/vqgan.py:ARG` for the tools: the config is `jaxtok.configs.vqgan`."""
from jaxtok.configs.vqgan import get_config  # noqa: F401
