"""`--config configs/nar_vqgan.py:ARG` for the tools: the config is `jaxtok.configs.nar_vqgan`."""
from jaxtok.configs.nar_vqgan import get_config  # noqa: F401
