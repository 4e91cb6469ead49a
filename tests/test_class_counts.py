"""official_class_counts: the official code's class-balancing windows, counted on a tiny case."""

import torch

from conftest import tiny_overrides
from trainer.class_counts import WindowedClassCounts, epoch_steps
from trainer.config import TrainConfig
from trainer.data import IGNORE_INDEX
from trainer.fit import Trainer
from trainer.losses import median_frequency_weights

CLASSES = 3


def _labels(*values: int) -> torch.Tensor:
    """One 1 x 1 x n label map holding ``values``."""
    return torch.tensor([[list(values)]])


def test_windows_count_one_labeled_epoch_and_slide_over_the_last_unlabeled_steps():
    counts = WindowedClassCounts(CLASSES, labeled_steps=2, unlabeled_steps=3, device=torch.device("cpu"))
    steps = [  # (labels, pseudo-labels) of five steps
        (_labels(0, 0, IGNORE_INDEX), _labels(1)),   # the ignore label is not a pixel of any class
        (_labels(1, 2), _labels(2)),
        (_labels(2, 2), _labels(2, 2)),              # labeled epoch over: these labels are not counted
        (_labels(2), _labels(0)),                    # window of 3: the first step's pseudo-label leaves
        (_labels(2), None),                          # no unlabeled term: the step counts as empty
    ]
    expected = [  # (labeled, window) counts per class after each step, and whether weights start
        ([2, 0, 0], [0, 1, 0], False),
        ([2, 1, 1], [0, 1, 1], False),
        ([2, 1, 1], [0, 1, 3], True),                # both windows full after max(2, 3) steps
        ([2, 1, 1], [1, 0, 3], True),
        ([2, 1, 1], [1, 0, 2], True),
    ]
    for (labels, pseudo), (labeled, window, ready) in zip(steps, expected):
        counts.add(labels, pseudo)
        assert counts.labeled.tolist() == labeled
        assert counts.unlabeled.sum(dim=0).tolist() == window
        assert counts.ready is ready
    assert counts.counts().tolist() == [3, 1, 3]

    restored = WindowedClassCounts(CLASSES, 2, 3, torch.device("cpu"))
    restored.load_state_dict(counts.state_dict())
    restored.add(_labels(0), _labels(1))
    counts.add(_labels(0), _labels(1))
    assert torch.equal(restored.counts(), counts.counts()) and restored.steps == counts.steps == 6


def test_window_lengths_are_one_epoch_of_each_stream():
    assert epoch_steps(372, 5) == 74 and epoch_steps(2975 - 372, 2) == 1301  # Cityscapes 1/8, the official batch
    assert epoch_steps(3, 4) == 1  # fewer images than a batch: still one step


def test_trainer_counts_the_loaded_labels_and_weights_only_once_the_windows_are_full():
    # 16 scenes, 4 labeled: a labeled epoch of 1 step, an unlabeled one of 12 images / 2 per step = 6.
    cfg = TrainConfig.from_dict(tiny_overrides(digits_scenes=16, class_balance="running", official_class_counts=True))
    trainer = Trainer(cfg)
    window = trainer.class_window
    assert (window.labeled_steps, window.unlabeled_steps) == (1, 6)
    augmented, loaded, pseudo = torch.full((1, 2, 2), 1), torch.zeros(1, 2, 2, dtype=torch.long), _labels(2)
    for step in range(1, 7):
        weights = trainer._class_weights(augmented, loaded, pseudo, active=True)
        assert (weights is None) is (step < 6)
    assert trainer.class_window.counts()[:CLASSES].tolist() == [4, 0, 6]  # the loaded labels, not the augmented
    assert trainer._class_weights(augmented, loaded, pseudo, active=False) is None  # still before the ramp-up
    weights = trainer._class_weights(augmented, loaded, pseudo, active=True)
    torch.testing.assert_close(weights, median_frequency_weights(trainer.class_window.counts()))

    plain = Trainer(cfg.replace(official_class_counts=False))  # the project's: every step, augmented labels
    plain._class_weights(augmented, loaded, pseudo, active=True)
    assert plain.class_window is None and plain.class_counts[:CLASSES].tolist() == [0, 4, 1]
