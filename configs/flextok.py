"""`--config configs/flextok.py:ARG` for the tools: the config is `jaxtok.configs.flextok`."""
from jaxtok.configs.flextok import get_config  # noqa: F401
