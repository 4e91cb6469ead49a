"""The official code's plateau rule (its trainSSL.py): reload the best checkpoint when val stalls.

The official loop keeps the evaluated network of its best val mIoU; when val has not
improved for more than ``iterations / 5`` iterations it loads that checkpoint into the
student, makes the teacher a copy of it, and trains on (same optimiser, the learning rate
still on its poly schedule: "optimize again with a lower LR"). ``reload_best_after`` is that
fraction of the run; the project's default, 0, never reloads.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class BestCheckpoint:
    """The best val evaluation so far, its network's state, and when val last improved."""

    def __init__(self, patience: float) -> None:
        self.patience = patience  # iterations without a better val mIoU that are still tolerated
        self.miou = -math.inf     # the first evaluation is always a best: there is one to reload
        self.iteration = 0        # of the best evaluation
        self.since = 0            # the best evaluation, or the last reload: the plateau counts from it
        self.state: dict[str, torch.Tensor] | None = None

    def observe(self, miou: float, iteration: int, network: nn.Module) -> bool:
        """Record an evaluation of ``network``; True when val has stalled too long (reload now)."""
        if miou > self.miou:
            self.miou, self.iteration, self.since = miou, iteration, iteration
            self.state = {k: v.detach().clone() for k, v in network.state_dict().items()}
            return False
        return iteration - self.since > self.patience

    def reload_into(self, *networks: nn.Module, iteration: int) -> None:
        """Load the best state into each network (student and teacher) and restart the plateau count."""
        for network in networks:
            network.load_state_dict(self.state)
        self.since = iteration

    def state_dict(self) -> dict[str, Any]:
        return {"miou": self.miou, "iteration": self.iteration, "since": self.since, "state": self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.miou, self.iteration, self.since = state["miou"], state["iteration"], state["since"]
        self.state = state["state"]
