"""`--config configs/instella_t2i.py:ARG` for the tools: the config is `jaxtok.configs.instella_t2i`."""
from jaxtok.configs.instella_t2i import get_config  # noqa: F401
