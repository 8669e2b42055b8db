"""`--config configs/dualtoken.py:ARG` for the tools: the config is `jaxtok.configs.dualtoken`."""
from jaxtok.configs.dualtoken import get_config  # noqa: F401
