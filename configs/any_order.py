"""`--config configs/any_order.py:ARG` for the tools: the config is `jaxtok.configs.any_order`."""
from jaxtok.configs.any_order import get_config  # noqa: F401
