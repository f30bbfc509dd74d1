"""Schedules and the optimiser: warm-up then cosine/linear decay; no decay on biases and norms."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from medsearch.model.tiny import TinyClipSpec, build_tiny_clip
from medsearch.train.schedule import build_optimizer, lr_factor, warmup_steps


def test_given_warmup_fraction_or_steps_when_converted_then_step_count() -> None:
    assert warmup_steps(0.1, 200) == 20
    assert warmup_steps(15, 200) == 15
    assert warmup_steps(500, 200) == 200
    assert warmup_steps(0, 200) == 0


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_given_schedule_when_stepped_then_warms_up_peaks_and_decays_to_zero(schedule: str) -> None:
    factors = [lr_factor(s, total_steps=100, warmup=10, schedule=schedule) for s in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert factors[100] == pytest.approx(0.0, abs=1e-12)
    midpoint = 0.5 if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * 0.5))
    assert factors[55] == pytest.approx(midpoint)


@pytest.mark.parametrize("vision", ["conv", "vit"])
def test_given_clip_when_optimizer_built_then_no_decay_on_biases_norms_logit_scale(
    vision: str,
) -> None:
    spec = TinyClipSpec(vision=vision)
    model = build_tiny_clip(["a chest ct", "a knee mri"], spec=spec).model
    model.text_model.requires_grad_(False)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    decayed, exempt = (set(map(id, g["params"])) for g in optimizer.param_groups)
    params = {id(p): (n, p) for n, p in model.named_parameters()}
    assert optimizer.param_groups[1]["weight_decay"] == 0.0
    assert id(model.logit_scale) in exempt
    # exempt: vectors (biases, layer- and batch-norm scales, ViT's class embedding) and the scale
    assert all(params[i][1].ndim < 2 or "logit" in params[i][0] for i in exempt)
    assert all(params[i][1].ndim >= 2 for i in decayed)  # weight matrices and conv kernels
    assert id(model.visual_projection.weight) in decayed
    # Frozen parameters are left out altogether
    assert not any(params[i][0].startswith("text_model.") for i in decayed | exempt)
    assert isinstance(optimizer, torch.optim.AdamW)
