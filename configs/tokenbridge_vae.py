"""`--config configs/tokenbridge_vae.py:ARG` for the tools: the config is `jaxtok.configs.tokenbridge_vae`."""
from jaxtok.configs.tokenbridge_vae import get_config  # noqa: F401
