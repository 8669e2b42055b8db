"""`--config configs/mar_vae.py:ARG` for the tools: the config is `jaxtok.configs.mar_vae`."""
from jaxtok.configs.mar_vae import get_config  # noqa: F401
