"""The paper's networks: built, ImageNet-format weights loaded from a file, one training step on CPU."""

from __future__ import annotations

import pytest
import torch

from test_datasets import _cfg, _voc
from trainer.config import ConfigError
from trainer.fit import Trainer
from trainer.models import build_model
from trainer.models.backbones import resnet50, resnet101


@pytest.mark.parametrize("network, make", [("deeplabv2_r101", resnet101), ("deeplabv3plus_r50", resnet50)])
def test_network_loads_torchvision_weights_and_trains_a_step(network, make, tmp_path):
    torch.manual_seed(123)  # another draw than the trainer's own initialisation
    weights = make().state_dict()
    weights["fc.weight"], weights["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)  # ImageNet's head
    torch.save(weights, tmp_path / "imagenet.pth")
    cfg = _cfg("voc", _voc(tmp_path / "voc"), network=network, pretrained=str(tmp_path / "imagenet.pth"),
               image_size=33, proj_dim=16, bank_size=4, labeled_fraction=0.25)
    trainer = Trainer(cfg)
    torch.testing.assert_close(trainer.student.backbone.layer3[1].conv2.weight, weights["layer3.1.conv2.weight"])
    before = trainer.student.backbone.layer4[0].conv1.weight.detach().clone()
    losses = trainer.train_step()
    assert torch.isfinite(torch.tensor(losses["total"]))
    assert not torch.equal(before, trainer.student.backbone.layer4[0].conv1.weight)
    logits, _ = trainer.student(torch.rand(1, 3, 33, 33))
    assert logits.shape[1] == 21

    # As torchvision's ImageNet files are: no num_batches_tracked buffers; or saved from DataParallel.
    old = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pth")
    torch.save({f"module.{k}": v for k, v in weights.items()}, tmp_path / "parallel.pth")
    for name in ("old.pth", "parallel.pth"):
        net = build_model(cfg.replace(pretrained=str(tmp_path / name)), 21)
        torch.testing.assert_close(net.backbone.layer4[2].bn3.running_var, weights["layer4.2.bn3.running_var"])

    del weights["layer2.0.conv1.weight"]
    torch.save(weights, tmp_path / "partial.pth")
    with pytest.raises(ConfigError, match="layer2.0.conv1.weight"):
        build_model(cfg.replace(pretrained=str(tmp_path / "partial.pth")), 21)


def test_amp_and_channels_last_switches_train_on_cpu():
    from conftest import tiny_overrides
    from trainer.config import TrainConfig

    trainer = Trainer(TrainConfig.from_dict(tiny_overrides(amp=True, channels_last=True, iterations=3)))
    seen = []
    trainer.student.backbone.register_forward_hook(lambda module, inputs, output: seen.append(output[1].dtype))
    conv = next(m for m in trainer.student.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    trainer.run()
    assert seen and seen[0] == torch.bfloat16  # the convolutions ran in bf16
    logits, features = trainer.student(torch.rand(2, 3, 32, 32))
    assert logits.dtype == features.dtype == torch.float32  # what the losses and the bank get
    assert 0 <= trainer.evaluate("val")[0] <= 1 and trainer.iteration == 3


def test_flip_evaluation_scores_an_image_and_its_mirror_alike():
    from conftest import tiny_overrides
    from trainer.config import TrainConfig
    from trainer.data import Split

    trainer = Trainer(TrainConfig.from_dict(tiny_overrides(eval_flip=True, iterations=2)))
    trainer.run()
    val = trainer.data.val
    plain = trainer.evaluate("val")
    trainer.data.val = Split(val.images.flip(-1), val.labels.flip(-1))
    mirrored = trainer.evaluate("val")
    assert plain[0] == mirrored[0]  # mean of both views: the same pixels get the same classes


def test_batch_norm_is_reestimated_on_unlabeled_images_at_the_end():
    from conftest import tiny_overrides
    from trainer.config import TrainConfig

    # fp32: the hook below computes the reference means in the dtype the layer sees.
    trainer = Trainer(TrainConfig.from_dict(tiny_overrides(bn_reestimate=4, iterations=2, eval_model="teacher",
                                                           amp=False)))
    norm = next(m for m in trainer.teacher.modules() if isinstance(m, torch.nn.BatchNorm2d))
    trainer.run()
    assert int(norm.num_batches_tracked) == 4 and norm.momentum == 0.1  # four fresh batches, momentum restored
    # The mean over those batches of the layer's input: compute it by hand from the same images.
    generator = torch.Generator().manual_seed(trainer.cfg.seed + 2)
    inputs = []
    hook = norm.register_forward_hook(lambda module, args, output: inputs.append(args[0].mean(dim=(0, 2, 3))))
    trainer.teacher.eval()  # eval mode: the statistics stay as they are while we look
    for _ in range(4):
        trainer.teacher(trainer.data.unlabeled.sample(trainer.cfg.batch_unlabeled, generator)[0])
    hook.remove()
    torch.testing.assert_close(norm.running_mean, torch.stack(inputs).mean(0), rtol=1e-4, atol=1e-5)
    state = trainer.data_generator.get_state()
    trainer.reestimate_batch_norm(4)
    assert torch.equal(state, trainer.data_generator.get_state())  # the training stream is untouched
