"""Experiment configs: one module per experiment, `get_config(arg) -> ml_collections.ConfigDict`.

Importable like any module (`from jaxtok.configs import titok`); the tools take them as files,
`--config configs/titok.py:tiny`, through the forwarding files in the repository's `configs/`.
"""
