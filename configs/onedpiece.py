"""`--config configs/onedpiece.py:ARG` for the tools: the config is `jaxtok.configs.onedpiece`."""
from jaxtok.configs.onedpiece import get_config  # noqa: F401
