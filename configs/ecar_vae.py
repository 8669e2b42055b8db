"""`--config configs/ecar_vae.py:ARG` for the tools: the config is `jaxtok.configs.ecar_vae`."""
from jaxtok.configs.ecar_vae import get_config  # noqa: F401
