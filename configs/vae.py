"""`--config configs/vae.py:ARG` for the tools: the config is `jaxtok.configs.vae`."""
from jaxtok.configs.vae import get_config  # noqa: F401
