"""`--config configs/xar_vae.py:ARG` for the tools: the config is `jaxtok.configs.xar_vae`."""
from jaxtok.configs.xar_vae import get_config  # noqa: F401
