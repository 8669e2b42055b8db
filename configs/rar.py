"""`--config configs/rar.py:ARG` for the tools: the config is `jaxtok.configs.rar`."""
from jaxtok.configs.rar import get_config  # noqa: F401
