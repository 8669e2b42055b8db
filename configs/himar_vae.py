"""`--config configs/himar_vae.py:ARG` for the tools: the config is `jaxtok.configs.himar_vae`."""
from jaxtok.configs.himar_vae import get_config  # noqa: F401
