"""`--config configs/instella.py:ARG` for the tools: the config is `jaxtok.configs.instella`."""
from jaxtok.configs.instella import get_config  # noqa: F401
