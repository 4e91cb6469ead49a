"""Runs on fresh seeds as Ray tasks: train at a budget, score on test, store each as it lands.

``retrain`` and ``ablate`` both ask "what does this config score on seeds the search never
used": each (config, seed) run is one Ray task with the study's CPUs and GPUs per trial, and
the caller stores its result as soon as it finishes, so an interrupted command keeps every
run that ended and a second call trains only the rest (the callers skip stored runs).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence, TypeVar

from study.location import Location
from study.previews import PREVIEW_IMAGES, encode
from study.spec import StudySpec
from trainer.config import ConfigError, TrainConfig

FIRST_SEED = 1000  # fresh seeds start here: far from the seeds a search config carries

Job = TypeVar("Job")


def fresh_seeds(count: int) -> list[int]:
    """The seeds of ``count`` runs per config, the same for every config (so gains pair by seed)."""
    if count < 1:
        raise ConfigError(f"--seeds {count}: give at least one seed (paired gains need 2 or more)")
    return [FIRST_SEED + i for i in range(count)]


def train_and_test(config: dict[str, Any]) -> dict[str, Any]:
    """One run (in a Ray worker): train at its budget, score on test and val, and say what it cost.

    It also brings back the confusion matrix of its test scoring and its predictions on the first
    ``PREVIEW_IMAGES`` val images (``study/previews.py``): what the report draws.

    A run whose loss turns NaN or inf comes back with ``diverged`` (the reason) and NaN scores
    instead of raising: the same config and seed would diverge again, so the caller records it
    (or refuses it) rather than retrying it forever.
    """
    from study.trial import placement
    from trainer.fit import DivergedError, fit

    cfg = TrainConfig.from_dict(config)
    seen: dict[str, Any] = {"images": 0.0, "seconds": 0.0, "iteration": 0, "placement": {}}

    def count(evaluation: Any, trainer: Any) -> None:
        # Each evaluation's throughput covers the training since the previous one: summed, the run's images.
        seen["images"] += evaluation.images_per_second * (evaluation.train_seconds - seen["seconds"])
        seen.update(seconds=evaluation.train_seconds, iteration=evaluation.iteration, placement=placement(trainer))

    def diverged(err: Exception, trainer: Any) -> None:
        seen["placement"] = placement(trainer)

    try:
        result = fit(cfg, on_evaluation=count, on_diverged=diverged, final_test=True, preview=PREVIEW_IMAGES)
        scores = {"test_miou": result.test_miou, "test_iou": result.test_iou, "val_miou": result.val_miou,
                  "diverged": None, "test_confusion": result.test_confusion,
                  "val_preview": [encode(p.index, p.image.numpy(), p.label.numpy(), p.prediction.numpy())
                                  for p in result.previews]}
        seen.update(seconds=result.train_seconds, iteration=result.iteration)
    except DivergedError as err:
        scores = {"test_miou": math.nan, "test_iou": None, "val_miou": math.nan, "diverged": str(err),
                  "test_confusion": None, "val_preview": None}
    where = seen["placement"]
    # The cost of what it trained up to its last evaluation (none before a divergence: unknown).
    timed = seen["iteration"] > 0 and seen["seconds"] > 0
    return {**scores, "train_seconds": seen["seconds"] if timed else None,
            "seconds_per_iteration": seen["seconds"] / seen["iteration"] if timed else None,
            "images_per_second": seen["images"] / seen["seconds"] if timed else None,
            **{k: where.get(k) for k in ("devices", "device_type", "precision", "channels_last", "node")}}


def run_on_ray(spec: StudySpec, jobs: Sequence[tuple[Job, TrainConfig]],
               store: Callable[[Job, TrainConfig, dict[str, Any]], None], progress: bool = True,
               desc: str = "runs", location: "Location | None" = None, address: str | None = None) -> None:
    """Run each job's config (its seed set) as a Ray task; call ``store`` with each result as it finishes.

    Joins ``address``, else ``spec.address`` (or starts a local Ray, stopped again at the end); on a
    cluster, every node must reach the study's ``location`` first (``check_nodes_reach``). On an error or an
    interrupt the runs still pending are stopped, so none keeps a worker busy for nobody.
    """
    if not jobs:
        return
    import ray
    from tqdm import tqdm

    from study.reach import check_nodes_reach
    from study.run import _ensure_pretrained, check_fits, connect

    owns_ray = connect(address or spec.address)
    pending: dict[Any, tuple[Job, TrainConfig]] = {}
    try:
        check_fits(spec)
        if location is not None:
            check_nodes_reach(location)
        _ensure_pretrained(jobs[0][1])
        task = ray.remote(train_and_test).options(num_cpus=spec.cpus_per_trial, num_gpus=spec.gpus_per_trial,
                                                  max_retries=1)
        pending = {task.remote(cfg.to_dict()): (job, cfg) for job, cfg in jobs}
        with tqdm(total=len(pending), desc=desc, unit="run", disable=not progress, dynamic_ncols=True) as bar:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                job, cfg = pending.pop(ready[0])
                store(job, cfg, ray.get(ready[0]))
                bar.update()
    finally:
        if owns_ray:
            # Disconnecting ends this driver's job and Ray stops the job's tasks itself. A
            # ray.cancel here would race a task that finishes at the same moment, and Ray 2.60
            # aborts the driver on that race ("Tried to complete task that was not pending").
            ray.shutdown()
        else:
            _cancel(pending)


def _cancel(pending: dict[Any, Any]) -> None:
    """Stop the runs still pending in a Ray session this call joined but does not own.

    The session outlives the call, so its tasks must be cancelled one by one. Runs that have
    already finished are left alone: cancelling one whose reply is in flight is the race above.
    """
    import ray

    if not pending:
        return
    _, running = ray.wait(list(pending), num_returns=len(pending), timeout=0)
    for ref in running:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001 - a task that ended meanwhile cannot be cancelled: fine
            pass
