"""`--config configs/maskgen_kl.py:ARG`: the config is `jaxtok.configs.maskgen_kl`."""
from jaxtok.configs.maskgen_kl import get_config  # noqa: F401
