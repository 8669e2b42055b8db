"""`--config configs/resgen.py:ARG` for the tools: the config is `jaxtok.configs.resgen`."""
from jaxtok.configs.resgen import get_config  # noqa: F401
