"""`--config configs/binary_diffusion.py:ARG` for the tools: the config is `jaxtok.configs.binary_diffusion`."""
from jaxtok.configs.binary_diffusion import get_config  # noqa: F401
