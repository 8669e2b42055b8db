"""`--config configs/gpstoken_gen.py:ARG` for the tools: the config is `jaxtok.configs.gpstoken_gen`."""
from jaxtok.configs.gpstoken_gen import get_config  # noqa: F401
