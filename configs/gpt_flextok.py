"""`--config configs/gpt_flextok.py:ARG` for the tools: the config is `jaxtok.configs.gpt_flextok`."""
from jaxtok.configs.gpt_flextok import get_config  # noqa: F401
