"""Optimiser and learning-rate schedule: AdamW with selective weight decay, warm-up + decay.

Plain Adam at a constant rate (``optimizer="adam"``, ``schedule="constant"``) stays available: it
is the earlier training recipe, kept so its runs can be reproduced and compared.
"""

from __future__ import annotations

import math

import torch


def no_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Tell whether a parameter is exempt from weight decay: biases, norms and ``logit_scale``."""
    return param.ndim < 2 or name.endswith(".bias") or "norm" in name or "logit_scale" in name


def build_optimizer(
    model: torch.nn.Module, *, lr: float, weight_decay: float, optimizer: str = "adamw"
) -> torch.optim.Optimizer:
    """Return AdamW over the trainable parameters with decay only on weight matrices, or Adam.

    ``adam`` is torch's Adam with its defaults over one group, exactly the earlier recipe.
    """
    if optimizer == "adam":
        return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    decay: list[torch.nn.Parameter] = []
    exempt: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (exempt if no_decay(name, param) else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": exempt, "weight_decay": 0.0},
    ]
    # betas/eps as in CLIP's paper for ViTs: a lower beta2 keeps large-batch training stable.
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


def warmup_steps(warmup: float, total_steps: int) -> int:
    """Turn a warm-up given as a fraction (< 1) or a step count (>= 1) into steps."""
    steps = round(warmup * total_steps) if warmup < 1 else round(warmup)
    return max(0, min(steps, total_steps))


def lr_factor(step: int, *, total_steps: int, warmup: int, schedule: str) -> float:
    """Return the lr multiplier at a step: linear warm-up, then cosine, linear or constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, total_steps: int, warmup: float, schedule: str
) -> torch.optim.lr_scheduler.LambdaLR:
    """Return the per-step schedule (stepped once after every optimiser step)."""
    steps = warmup_steps(warmup, total_steps)

    def factor(step: int) -> float:
        return lr_factor(step, total_steps=total_steps, warmup=steps, schedule=schedule)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
