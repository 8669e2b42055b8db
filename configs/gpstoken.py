"""`--config configs/gpstoken.py:ARG` for the tools: the config is `jaxtok.configs.gpstoken`."""
from jaxtok.configs.gpstoken import get_config  # noqa: F401
