"""The mean teacher: an exponential moving average of the student."""

from __future__ import annotations

import math

import torch
from torch import nn


def ema_momentum(iteration: int, iterations: int, base: float, official: bool = False) -> float:
    """1 - (1 - base)(cos(pi i / N) + 1)/2: starts at ``base`` and rises to 1 at the end.

    ``official``: capped at 1 - 1/(10 i + 1), as the official code does, so that the first
    steps follow the student closely (0 at i = 0: the teacher becomes the student).
    """
    momentum = 1.0 - (1.0 - base) * (math.cos(math.pi * iteration / iterations) + 1.0) / 2.0
    if official:
        momentum = min(1.0 - 1.0 / (10 * iteration + 1), momentum)
    return momentum


@torch.no_grad()
def update_teacher(teacher: nn.Module, student: nn.Module, momentum: float, parameters_only: bool = False) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, for parameters and float buffers.

    Batch-norm running statistics are averaged like the weights so that the teacher in eval
    mode has statistics that match its weights; integer buffers are copied.
    ``parameters_only``: average the parameters and leave the buffers alone, as the official
    code does (its teacher's running statistics are then those of its own forward passes).
    """
    if parameters_only:
        for target, value in zip(teacher.parameters(), student.parameters()):
            target.mul_(momentum).add_(value.detach(), alpha=1.0 - momentum)
        return
    teacher_state = teacher.state_dict()
    for name, value in student.state_dict().items():
        target = teacher_state[name]
        if target.dtype.is_floating_point:
            target.mul_(momentum).add_(value.detach(), alpha=1.0 - momentum)
        else:
            target.copy_(value)
