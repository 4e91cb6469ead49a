"""The whole contrastive term, eager and compiled (compile=true): the same loss and gradients."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_overrides
from trainer.config import TrainConfig
from trainer.contrastive_term import build_term, contrastive_term
from trainer.fit import Trainer
from trainer.models.selectors import ClassSelectors


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    classes = torch.tensor([0] * 30 + [1] * 20 + [2] * 3)[torch.randperm(53, generator=g)]
    z = torch.randn(53, 16, generator=g)
    bank = F.normalize(torch.randn(3, 8, 16, generator=g), dim=2)
    filled = torch.ones(3, 8, dtype=torch.bool)
    filled[2, 5:] = False  # a class whose ring is not full yet
    return z, classes, bank, filled


@pytest.mark.parametrize("loss", ["paper", "infonce"])
def test_the_compiled_term_gives_the_eager_terms_loss_and_gradients(loss):
    torch.manual_seed(0)
    selectors = ClassSelectors(3, 16), ClassSelectors(3, 16)
    z, classes, bank, filled = _problem()
    results = []
    for term in (contrastive_term, build_term(True)):
        features, memory = (copy.deepcopy(s) for s in selectors)
        leaf = z.clone().requires_grad_()
        value = term(features, memory, leaf, classes, bank, filled, loss=loss, temperature=0.2)
        value.backward()
        results.append((value.detach(), leaf.grad, [p.grad for p in (*features.parameters(), *memory.parameters())]))
    (eager, eager_z, eager_p), (compiled, compiled_z, compiled_p) = results
    assert eager.item() != 0.0
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled_z, eager_z, rtol=1e-4, atol=1e-6)
    for ours, theirs in zip(compiled_p, eager_p):
        assert (ours is None) == (theirs is None)
        if ours is not None:
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_compile_true_trains_the_compiled_term_and_eager_runs_the_plain_function():
    assert Trainer(TrainConfig.from_dict(tiny_overrides(iterations=1))).contrastive_term is contrastive_term
    compiled = Trainer(TrainConfig.from_dict(tiny_overrides(iterations=1, compile=True))).contrastive_term
    assert getattr(compiled, "_torchdynamo_orig_callable", None) is contrastive_term  # torch.compile's wrapper of it


def test_the_compiled_term_runs_with_no_word_from_dynamo():
    """The packing by class runs eagerly on purpose (torch.compiler.disable): Dynamo neither warns
    that it cannot trace it nor logs a graph break. A process of its own: Dynamo warns once per process."""
    code = """
import torch, torch.nn.functional as F
from trainer.contrastive_term import build_term
from trainer.models.selectors import ClassSelectors
torch.manual_seed(0)
classes = torch.tensor([0] * 300 + [1] * 20 + [2] * 3)[torch.randperm(323)]
z, bank = torch.randn(323, 16, requires_grad=True), F.normalize(torch.randn(3, 8, 16), dim=2)
filled = torch.ones(3, 8, dtype=torch.bool)
filled[2, 5:] = False
term = build_term(True)
for _ in range(2):
    term(ClassSelectors(3, 16), ClassSelectors(3, 16), z, classes, bank, filled).backward()
print("trained")
"""
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "trained", done.stderr[-3000:]
    for word in ("Graph break", "Dynamo does not know", "torch._dynamo"):
        assert word not in done.stderr, done.stderr[-3000:]
