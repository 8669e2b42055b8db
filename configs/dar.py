"""`--config configs/dar.py:ARG` for the tools: the config is `jaxtok.configs.dar`."""
from jaxtok.configs.dar import get_config  # noqa: F401
