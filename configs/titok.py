"""`--config configs/titok.py:ARG` for the tools: the config is `jaxtok.configs.titok`."""
from jaxtok.configs.titok import get_config  # noqa: F401
