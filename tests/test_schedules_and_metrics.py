"""EMA schedule, pseudo-label weights, ramp-up, class balancing, mIoU."""

import math

import pytest
import torch
from torch import nn

from trainer.losses import (entropy_term, median_frequency_weights, pseudo_label_weights, sigmoid_ramp_up,
                            weighted_cross_entropy)
from trainer.metrics import confusion_matrix, iou_per_class, mean_iou
from trainer.teacher import ema_momentum, update_teacher


def test_ema_momentum_follows_the_cosine_schedule():
    assert ema_momentum(0, 100, 0.995) == pytest.approx(0.995)
    assert ema_momentum(50, 100, 0.995) == pytest.approx(1 - 0.005 / 2)
    assert ema_momentum(100, 100, 0.995) == pytest.approx(1.0)
    values = [ema_momentum(i, 100, 0.99) for i in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:]))


def test_update_teacher_is_an_exponential_moving_average():
    student, teacher = nn.Linear(2, 2), nn.Linear(2, 2)
    before = teacher.weight.detach().clone()
    update_teacher(teacher, student, 0.9)
    torch.testing.assert_close(teacher.weight, 0.9 * before + 0.1 * student.weight.detach())


def test_official_ema_momentum_is_capped_early():
    # min(1 - 1/(10 i + 1), cosine momentum): 0 at i = 0, 10/11 at i = 1, 100/101 at i = 10,
    # and the cosine momentum once the cap passes it (i >= 20 for base 0.995).
    assert ema_momentum(0, 100, 0.995, official=True) == 0.0
    assert ema_momentum(1, 100, 0.995, official=True) == pytest.approx(10 / 11)
    assert ema_momentum(10, 100, 0.995, official=True) == pytest.approx(100 / 101)
    assert ema_momentum(30, 100, 0.995, official=True) == ema_momentum(30, 100, 0.995)


def test_official_ema_leaves_batch_norm_buffers_alone():
    student, teacher = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    student(torch.randn(8, 2) + 3)  # moves the student's running statistics
    with torch.no_grad():
        student.weight.fill_(2.0)
    update_teacher(teacher, student, 0.5, parameters_only=True)
    torch.testing.assert_close(teacher.weight, torch.full((2,), 1.5))
    assert torch.equal(teacher.running_mean, torch.zeros(2)) and int(teacher.num_batches_tracked) == 0
    update_teacher(teacher, student, 0.5)  # the project's EMA averages them
    torch.testing.assert_close(teacher.running_mean, 0.5 * student.running_mean)


def test_sigmoid_ramp_up():
    assert sigmoid_ramp_up(0, 2000) == pytest.approx(math.exp(-5))
    assert sigmoid_ramp_up(1000, 2000) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_ramp_up(2000, 2000) == 1.0 and sigmoid_ramp_up(5, 0) == 1.0


def test_pseudo_label_weights_are_confidence_to_the_power_times_ramp():
    confidence = torch.tensor([1.0, 0.5, 0.9])
    torch.testing.assert_close(pseudo_label_weights(confidence, 6, 0.5), 0.5 * confidence ** 6)


def test_weighted_cross_entropy_skips_ignored_pixels():
    logits = torch.zeros(1, 2, 1, 3)
    labels = torch.tensor([[[0, 1, 255]]])
    loss = weighted_cross_entropy(logits, labels, torch.tensor([[[1.0, 0.5, 1.0]]]))
    assert loss.item() == pytest.approx(math.log(2) * 1.5 / 3)


def test_median_frequency_weights():
    weights = median_frequency_weights(torch.tensor([100.0, 25.0, 4.0, 0.0]))
    # median of (0, 4, 25, 100) is 14.5 -> sqrt(14.5 / f); the unseen class gets the largest weight
    expected = [math.sqrt(14.5 / 100), math.sqrt(14.5 / 25), math.sqrt(14.5 / 4), math.sqrt(14.5 / 4)]
    torch.testing.assert_close(weights, torch.tensor(expected))


def test_entropy_is_one_for_uniform_and_zero_for_certain_predictions():
    uniform = torch.zeros(1, 4, 2, 2)
    certain = torch.tensor([100.0, 0, 0, 0])[None, :, None, None].expand(1, 4, 2, 2)
    valid = torch.ones(1, 2, 2, dtype=torch.bool)
    assert entropy_term(uniform, valid).item() == pytest.approx(1.0)
    assert entropy_term(certain, valid).item() == pytest.approx(0.0, abs=1e-6)


def test_miou_against_a_hand_counted_confusion_matrix():
    labels = torch.tensor([[0, 0, 1, 1, 2, 255]])
    predictions = torch.tensor([[0, 1, 1, 1, 0, 2]])
    confusion = confusion_matrix(predictions, labels, num_classes=4)
    assert confusion.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    iou = iou_per_class(confusion)
    # class 0: tp 1, union 1+1+1 = 3; class 1: tp 2, union 3; class 2: 0/1; class 3 absent -> NaN
    assert iou[:3].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert math.isnan(iou[3])
    assert mean_iou(confusion) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_median_frequency_weights_when_most_classes_are_unseen():
    # Cityscapes' first batch: 3 of 19 classes. The median over all is 0; over the seen ones it is 20.
    counts = torch.zeros(19)
    counts[[0, 10, 13]] = torch.tensor([80.0, 20.0, 5.0])
    weights = median_frequency_weights(counts)
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights[[0, 10, 13]], torch.tensor([math.sqrt(20 / 80), 1.0, 2.0]))
    assert (weights[counts == 0] == 2.0).all()  # unseen classes: the largest weight
