"""`--config configs/flowtok.py:ARG` for the tools: the config is `jaxtok.configs.flowtok`."""
from jaxtok.configs.flowtok import get_config  # noqa: F401
