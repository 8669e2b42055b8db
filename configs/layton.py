"""`--config configs/layton.py:ARG` for the tools: the config is `jaxtok.configs.layton`."""
from jaxtok.configs.layton import get_config  # noqa: F401
