"""`--config configs/gpt_dar.py:ARG` for the tools: the config is `jaxtok.configs.gpt_dar`."""
from jaxtok.configs.gpt_dar import get_config  # noqa: F401
