"""`--config configs/maskgit_titok.py:ARG` for the tools: the config is `jaxtok.configs.maskgit_titok`."""
from jaxtok.configs.maskgit_titok import get_config  # noqa: F401
