"""`--config configs/binary_ar.py:ARG` for the tools: the config is `jaxtok.configs.binary_ar`."""
from jaxtok.configs.binary_ar import get_config  # noqa: F401
