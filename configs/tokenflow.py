"""`--config configs/tokenflow.py:ARG` for the tools: the config is `jaxtok.configs.tokenflow`."""
from jaxtok.configs.tokenflow import get_config  # noqa: F401
