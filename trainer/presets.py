"""Per-dataset presets: the few values a dataset changes on top of the paper's defaults.

Like UniMatch's one short config per dataset. ``TrainConfig()`` holds the paper's
PASCAL VOC values; ``trainer.config.preset(name)`` returns them with the dataset's changes.
Why each digits value differs from the paper is said in docs/digits.md.

Plain data, importing nothing of the trainer: ``trainer.config`` reads it.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # The embedded scenes: 48x48 pixels, a small network, a CPU budget of minutes.
    "digits": {
        "dataset": "digits",
        "network": "small",
        "image_size": 48,
        "batch_labeled": 8,
        "batch_unlabeled": 8,
        "iterations": 2000,
        "eval_every": 250,
        "eval_batch": 64,
        "lr": 0.01,
        "ramp_up": 500,
        "bank_lead": 250,
        "aspp_dilations": [1, 2, 3, 4],
        "aug_scale_min": 0.9,
        "aug_scale_max": 1.1,
        "aug_shift": 0.15,
        "hflip": False,
        "proj_dim": 64,
        "class_balance": "batch",
        "class_balance_labeled": False,
        "seed": 0,
    },
    # PASCAL VOC 2012 with SBD: the paper's values as they are.
    "voc": {"dataset": "voc"},
    # Cityscapes: 1/8 of the images labeled, class balancing as in the paper; 2048x1024
    # images halved to 1024x512 and cut into 512x512 crops; the official configs' batch of
    # 5 labeled images and 2 unlabeled ones (4 views).
    "cityscapes": {"dataset": "cityscapes", "class_balance": "running", "labeled_fraction": 1 / 8,
                   "image_size": 512, "resize_height": 512, "batch_labeled": 5, "batch_unlabeled": 4},
    "gta5_cityscapes": {"dataset": "gta5_cityscapes", "class_balance": "running", "image_size": 512,
                        "resize_height": 512, "batch_labeled": 5, "batch_unlabeled": 4},
}


# Every semi-supervised term off: the baseline a study's gain is measured against
# (the teacher still exists, but nothing it predicts reaches the loss).
SUPERVISED_ONLY: dict[str, Any] = {
    "pseudo_label_weight": 0.0, "entropy_weight": 0.0, "contrastive_weight_labeled": 0.0,
    "contrastive_weight_unlabeled": 0.0, "class_balance": "off",
}
