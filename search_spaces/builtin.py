"""The built-in search spaces: ``paper``, ``default`` and ``contrastive``.

Ranges are log-scaled where the paper's value is a scale (weights, sizes, rates)
rather than a position, and each contains the paper's value, so the reference
point is a point of the space. The paper's values come from ``TrainConfig()``
(the paper's PASCAL VOC values), except the learning rate: the paper's 2e-4 is
for DeepLabv2 on VOC, and the digits preset's rate of the small network is the
one a study on the embedded data can reproduce.
"""

from __future__ import annotations

from typing import Any

import optuna

from search_spaces.space import SearchSpace
from trainer.config import TrainConfig, preset

_CONTRASTIVE_KEYS = ("bank_size", "contrastive_loss", "contrastive_weight_labeled", "contrastive_weight_unlabeled")
_SELF_TRAINING_KEYS = ("pseudo_label_weight", "class_balance", "entropy_weight", "pseudo_label_power",
                       "ema_momentum")

# The parts of the method, as `semiseg-study ablate` resets or adds them: the memory bank and the
# loss it feeds (the temperature only exists for InfoNCE, so it goes with the loss's kind), the
# self-training signal (how much pseudo-labels weigh, how sharply confidence counts, how slowly
# the teacher that makes them moves), class balancing, the entropy term and the learning rate.
MEMORY_BANK = "memory bank and contrastive loss"
_CONTRASTIVE_GROUPS = {MEMORY_BANK: (*_CONTRASTIVE_KEYS, "temperature")}
_DEFAULT_GROUPS = {
    **_CONTRASTIVE_GROUPS,
    "pseudo-labels and teacher": ("pseudo_label_weight", "pseudo_label_power", "ema_momentum"),
    "class balancing": ("class_balance",),
    "entropy": ("entropy_weight",),
    "learning rate": ("lr",),
}


def _paper_values(keys: tuple[str, ...]) -> dict[str, Any]:
    paper = TrainConfig()
    return {key: getattr(paper, key) for key in keys}


def _suggest_paper(trial: optuna.trial.Trial) -> dict[str, Any]:
    """Nothing is searched: every trial is the preset itself (seed studies, baselines)."""
    return {}


def _suggest_contrastive(trial: optuna.trial.Trial) -> dict[str, Any]:
    """The memory bank and the contrastive loss; the temperature only exists for InfoNCE."""
    values: dict[str, Any] = {
        "bank_size": trial.suggest_int("bank_size", 32, 2048, log=True),
        "contrastive_loss": trial.suggest_categorical("contrastive_loss", ["paper", "infonce"]),
    }
    if values["contrastive_loss"] == "infonce":
        values["temperature"] = trial.suggest_float("temperature", 0.03, 1.0, log=True)
    values["contrastive_weight_labeled"] = trial.suggest_float("contrastive_weight_labeled", 0.01, 1.0, log=True)
    values["contrastive_weight_unlabeled"] = trial.suggest_float("contrastive_weight_unlabeled", 0.01, 1.0,
                                                                 log=True)
    return values


def _suggest_default(trial: optuna.trial.Trial) -> dict[str, Any]:
    """The contrastive part, self-training (pseudo-labels, balance, entropy, teacher) and the rate."""
    return {
        **_suggest_contrastive(trial),
        "pseudo_label_weight": trial.suggest_float("pseudo_label_weight", 0.25, 2.0, log=True),
        "class_balance": trial.suggest_categorical("class_balance", ["off", "batch", "running"]),
        "entropy_weight": trial.suggest_float("entropy_weight", 0.001, 0.1, log=True),
        "pseudo_label_power": trial.suggest_float("pseudo_label_power", 1.0, 8.0),
        "ema_momentum": trial.suggest_float("ema_momentum", 0.98, 0.999),
        "lr": trial.suggest_float("lr", 0.002, 0.05, log=True),
    }


BUILTIN: dict[str, SearchSpace] = {
    "paper": SearchSpace(
        name="paper",
        description="searches nothing: every trial runs the dataset preset (the paper's method as configured)",
        suggest=_suggest_paper,
        paper_point={},
        fixed={},
    ),
    "default": SearchSpace(
        name="default",
        description="memory bank, contrastive loss (paper or InfoNCE with its temperature), pseudo-label "
                    "weight and power, class balancing, entropy weight, teacher EMA and learning rate",
        suggest=_suggest_default,
        paper_point={**_paper_values(_CONTRASTIVE_KEYS + _SELF_TRAINING_KEYS), "lr": preset("digits").lr},
        fixed={},
        groups=_DEFAULT_GROUPS,
    ),
    "contrastive": SearchSpace(
        name="contrastive",
        description="memory bank size and the contrastive loss only: its kind, InfoNCE temperature and weights",
        suggest=_suggest_contrastive,
        paper_point=_paper_values(_CONTRASTIVE_KEYS),
        fixed={},
        groups=_CONTRASTIVE_GROUPS,
    ),
}
