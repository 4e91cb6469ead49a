"""One Ray Tune trial: the trainer, reporting every evaluation with a checkpoint.

This is the only place where the trainer meets Ray. A trial's ``config`` holds the
values the searcher sampled; ``fixed`` holds the study's fixed overrides. Each
evaluation becomes one ``tune.report`` whose checkpoint holds the whole trainer state,
so a retried or resumed trial continues bit-exactly where it stopped.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from ray import tune

from trainer.config import TrainConfig
from trainer.fit import DivergedError, Evaluation, Trainer

CHECKPOINT_FILE = "trainer.pt"


def trial_config(sampled: dict[str, Any], fixed: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of a trial: the dataset preset, the study's fixed values, then the sample."""
    return TrainConfig.from_dict({**fixed, **sampled})


def report_metrics(evaluation: Evaluation, cfg: TrainConfig) -> dict[str, Any]:
    """The flat metrics of one evaluation, as Tune, ASHA, Optuna and the Parquet store see them."""
    metrics = evaluation.as_dict()
    losses = metrics.pop("losses")
    metrics.update({f"loss_{k}": v for k, v in losses.items()})
    metrics["val_miou"] = metrics.pop("miou")
    metrics["max_iterations"] = cfg.iterations
    metrics["diverged"] = ""
    metrics.update(_placement())
    return metrics


def _placement() -> dict[str, Any]:
    """Where the trial runs: the Ray node (IP and id, as several nodes may share an IP) and its GPUs."""
    import ray

    context = ray.get_runtime_context()
    return {"node": f"{ray.util.get_node_ip_address()}/{context.get_node_id()[:8]}",
            "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids())}


def run_trial(config: dict[str, Any], fixed: dict[str, Any]) -> None:
    """The Tune function trainable (bind ``fixed`` with ``tune.with_parameters``)."""
    cfg = trial_config(config, fixed)
    trainer = Trainer(cfg)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.load(os.path.join(folder, CHECKPOINT_FILE))
    def report(evaluation: Evaluation, trainer: Trainer) -> None:
        with tempfile.TemporaryDirectory() as folder:
            trainer.save(os.path.join(folder, CHECKPOINT_FILE))
            tune.report(report_metrics(evaluation, cfg), checkpoint=tune.Checkpoint.from_directory(folder))

    try:
        trainer.run(report)
    except DivergedError as err:
        # Retrying a diverged config gives the same NaN: end the trial with its reason instead.
        evaluation = trainer.evaluation("val")
        metrics = report_metrics(evaluation, cfg)
        # A key of its own (the next iteration) and no score: it never reached an evaluation.
        metrics.update(val_miou=float("nan"), diverged=str(err), iteration=trainer.iteration + 1)
        tune.report(metrics)

