"""`--config configs/tatitok.py:ARG`: the config is `jaxtok.configs.tatitok`."""
from jaxtok.configs.tatitok import get_config  # noqa: F401
