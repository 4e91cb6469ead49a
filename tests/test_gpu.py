"""The GPU path on a real layout: pinned batches from loading processes, bf16, channels-last.

Skipped without CUDA (this project's CI has none); on a GPU machine `pytest tests/test_gpu.py`
checks what the CPU tests cannot.
"""

from __future__ import annotations

import pytest
import torch

from test_datasets import _cfg, _voc
from trainer.fit import Trainer

# The one test that may skip under CI (tests/ci_gate.py lets tests marked gpu skip): CI has no GPU.
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs a CUDA device (the one test CI may skip: its machines have none)")]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_real_layout_trains_on_the_gpu_from_pinned_batches(workers, tmp_path):
    cfg = _cfg("voc", _voc(tmp_path / "voc"), device="cuda", workers=workers, amp=True, channels_last=True,
               labeled_fraction=0.5, iterations=4, eval_every=2, eval_flip=True)
    trainer = Trainer(cfg)
    images, labels = trainer.labeled_stream.next()
    assert images.is_pinned() and labels.is_pinned() and images.dtype == torch.uint8
    trainer.load_state_dict(Trainer(cfg).state_dict())  # back to the first batch
    last = trainer.run()
    assert last.iteration == 4 and 0 <= last.miou <= 1
    assert trainer.bank.vectors.is_cuda and next(trainer.student.parameters()).is_cuda


def test_the_fast_path_compiled_bf16_channels_last_trains_on_the_gpu(tmp_path):
    cfg = _cfg("voc", _voc(tmp_path / "voc"), device="cuda", amp=True, channels_last=True, compile=True,
               labeled_fraction=0.5, iterations=4, eval_every=2)
    trainer = Trainer(cfg)
    parts = [trainer.train_step() for _ in range(4)]
    assert all(torch.isfinite(torch.tensor(list(p.values()))).all() for p in parts)
    assert 0 <= trainer.evaluation("val").miou <= 1
