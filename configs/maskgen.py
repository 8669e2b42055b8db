"""`--config configs/maskgen.py:ARG`: the config is `jaxtok.configs.maskgen`."""
from jaxtok.configs.maskgen import get_config  # noqa: F401
