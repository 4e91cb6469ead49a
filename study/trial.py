"""One Ray Tune trial: the trainer, reporting every evaluation, with a checkpoint now and then.

This is the only place where the trainer meets Ray. A trial's ``config`` holds the
values the searcher sampled; the study's spec turns them into the trial's TrainConfig. Each
evaluation becomes one ``tune.report``; the first one ``checkpoint_every`` seconds after the
last checkpoint (every one with 0) carries a checkpoint of the whole trainer state, so a
retried or resumed trial continues bit-exactly from there.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from typing import Any

from ray import tune

from study.records import evaluation_metrics
from study.spec import StudySpec
from trainer.fit import DivergedError, Evaluation, Trainer, fit

CHECKPOINT_FILE = "trainer.pt"

def report_metrics(evaluation: Evaluation, trainer: Trainer) -> dict[str, Any]:
    """One evaluation as reported to Tune: the record's columns (``study.records``), and what ASHA
    and the searcher read besides (the full budget, whether it diverged) and where the trial runs."""
    return {**evaluation_metrics(evaluation), "max_iterations": trainer.cfg.iterations, "diverged": "",
            **placement(trainer)}


def placement(trainer: Trainer) -> dict[str, Any]:
    """Where the trial runs and on what: the Ray node (IP and id, as several nodes may share an IP),
    its GPUs, the compute it holds (GPUs when it trains on one, else CPUs), and the fast path it took."""
    import ray
    import torch

    context = ray.get_runtime_context()
    assigned = context.get_assigned_resources()
    on_gpu = trainer.device.type == "cuda"
    return {"node": f"{ray.util.get_node_ip_address()}/{context.get_node_id()[:8]}",
            "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
            "devices": float(assigned.get("GPU" if on_gpu else "CPU", 0.0)),
            "device_type": f"cuda:{torch.cuda.get_device_name(trainer.device)}" if on_gpu else "cpu",
            "precision": trainer.fast_path.precision, "channels_last": trainer.fast_path.channels_last}


def run_trial(config: dict[str, Any], spec: StudySpec) -> None:
    """The Tune function trainable (bind ``spec`` with ``tune.with_parameters``)."""
    cfg = spec.trial_config(config)
    last_checkpoint = time.monotonic()  # a trial restored from a checkpoint starts counting again

    def report(evaluation: Evaluation, trainer: Trainer) -> None:
        # A checkpoint costs the whole trainer state written and uploaded (7 MB for the digits
        # network, hundreds for a ResNet-101), so a trial takes one at most every
        # spec.checkpoint_every seconds: a failure replays at most that much, to the same values.
        nonlocal last_checkpoint
        metrics = report_metrics(evaluation, trainer)
        if time.monotonic() - last_checkpoint < spec.checkpoint_every:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            trainer.save(os.path.join(folder, CHECKPOINT_FILE))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        last_checkpoint = time.monotonic()

    def report_divergence(err: DivergedError, trainer: Trainer) -> None:
        metrics = report_metrics(trainer.evaluation("val"), trainer)
        # A key of its own (the next iteration) and no score: it never reached an evaluation.
        metrics.update(val_miou=float("nan"), diverged=str(err), iteration=trainer.iteration + 1)
        tune.report(metrics)

    checkpoint = tune.get_checkpoint()
    with checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext() as folder:
        try:
            fit(cfg, resume_from=os.path.join(folder, CHECKPOINT_FILE) if folder else None,
                on_evaluation=report, on_diverged=report_divergence)
        except DivergedError:
            pass  # retrying would give the same NaN: the trial ends with its reason, reported above

