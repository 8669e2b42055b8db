"""`--config configs/cubid_vae.py:ARG` for the tools: the config is `jaxtok.configs.cubid_vae`."""
from jaxtok.configs.cubid_vae import get_config  # noqa: F401
