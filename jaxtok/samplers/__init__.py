"""Model-agnostic samplers: each takes the model as a callable and runs its whole loop in one jit.

schedules (mask counts, DiSA), guidance (CFG forms, scale schedules, APG), categorical (tail-keeping
sampling, top-k/top-p), autoregressive (KV cache; single tokens or token groups), neighbor (NAR: one
call per Manhattan-distance diagonal), maskgit, masked_diffusion (first-hitting,
ancestral), flow (Euler/Heun, CFG/APG), mar (random order + per-token flow head, DiSA).
"""
from jaxtok.samplers import (autoregressive, categorical, flow, guidance, mar, maskgit,
                             masked_diffusion, neighbor, schedules)

__all__ = ["autoregressive", "categorical", "flow", "guidance", "mar", "maskgit", "masked_diffusion",
           "neighbor", "schedules"]
