"""`--config configs/textok.py:ARG`: the config is `jaxtok.configs.textok` (model config only)."""
from jaxtok.configs.textok import get_config  # noqa: F401
