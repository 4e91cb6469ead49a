"""What a study is: its spec (plain data, saved as study.json) and its folder.

The folder is a ``study.location.Location``: ``--dir/NAME`` on a local disk, or a prefix of an
object store (``s3://bucket/prefix/NAME``), where ``optuna.db`` is the snapshot of the driver's
SQLite (``study/optuna_snapshot.py``).

    studies/<name>/
      study.json        the spec, versions of the libraries, the git commit
      optuna.db         Optuna storage (SQLite), unless --storage names another
      asha_rungs.json   ASHA's rungs, so a resumed study prunes as before
      tune/<name>/      the Ray Tune experiment (trial checkpoints, Tune's own logs)
      results/          the Parquet store: reports/ and trials/ (rows: study/records.py)
      retrain/          retrain runs (Parquet), once `semiseg-study retrain` has run
      ablate/           ablation runs (Parquet), once `semiseg-study ablate` has run
      report.html       the dashboard, once `semiseg-study report` has run
"""

from __future__ import annotations

import dataclasses
import functools
import json
import platform
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from search_spaces import SearchSpace, get_space
from study.location import Location, as_location
from trainer.config import ConfigError, TrainConfig

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

# The default study on the embedded digits: a budget that ends in about ten minutes on
# two cores. The ramp-up is shortened with the budget so that the contrastive loss has
# acted before ASHA's first rung.
DEFAULT_FIXED = {"eval_every": 100, "ramp_up": 200, "bank_lead": 100}


@dataclass
class StudySpec:
    name: str
    space: str = "default"
    samples: int = 12
    max_iters: int = 900
    grace: int = 300
    reduction: float = 3.0
    searcher: str = "tpe"
    scheduler: str = "asha"
    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    concurrency: int = 0          # 0: as many trials as the cluster's CPUs (or GPUs) allow
    storage: str | None = None    # an Optuna storage URL; None: SQLite in the study folder
    seed: int = 0
    time_budget: float = 0.0      # seconds of wall time after which the study stops; 0: none
    keep_checkpoints: int = 2     # per trial; 0 keeps all (see docs/troubleshooting.md)
    checkpoint_every: float = 30.0  # seconds between a trial's checkpoints, at least; 0: at every evaluation
    study_id: str = ""            # the Optuna study name: NAME-<random>, set when the study is created
    fixed: dict[str, Any] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)  # sampled values evaluated first, after the paper point

    def validate(self) -> "StudySpec":
        self._check_types()
        if not NAME_PATTERN.match(self.name):
            raise ConfigError(f"study name {self.name!r}: use letters, digits, '.', '_' and '-' only "
                              "(no path separators), at most 100 characters")
        checks = [
            (self.samples >= 1, f"--samples {self.samples}: need at least 1 trial"),
            (self.max_iters >= 1, f"--max-iters {self.max_iters}: need at least 1 iteration"),
            (1 <= self.grace <= self.max_iters, f"--grace {self.grace}: must be between 1 and --max-iters {self.max_iters}"),
            (self.reduction > 1, f"--reduction {self.reduction}: must be above 1"),
            (self.searcher in ("tpe", "random"), f"--searcher {self.searcher!r}: choose 'tpe' or 'random'"),
            (self.scheduler in ("asha", "fifo"), f"--scheduler {self.scheduler!r}: choose 'asha' or 'fifo'"),
            (self.cpus_per_trial > 0, f"--cpus-per-trial {self.cpus_per_trial}: must be above 0"),
            (self.gpus_per_trial >= 0, f"--gpus-per-trial {self.gpus_per_trial}: must be 0 or more"),
            (self.concurrency >= 0, f"--concurrency {self.concurrency}: must be 0 (auto) or more"),
            (self.keep_checkpoints >= 0, f"--keep-checkpoints {self.keep_checkpoints}: must be 0 (all) or more"),
            (self.checkpoint_every >= 0,
             f"--checkpoint-every {self.checkpoint_every}: must be 0 (every evaluation) or more seconds"),
            (self.time_budget >= 0, f"--time-budget {self.time_budget}: must be 0 (none) or more seconds"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        for i, point in enumerate(self.points, start=1):
            if not isinstance(point, dict):
                raise ConfigError(f"--points entry {i} is {point!r}: each point is an object of param values")
        unknown = set(self.fixed) - {f.name for f in dataclasses.fields(TrainConfig)}
        if unknown:
            TrainConfig.from_dict({k: self.fixed[k] for k in sorted(unknown)[:1]})  # raises with a hint
        return self

    def _check_types(self) -> None:
        """A hand-edited study.json can hold a string where a number belongs: say which field."""
        kinds = {"str": (str,), "int": (int,), "float": (int, float), "str | None": (str, type(None)),
                 "dict[str, Any]": (dict,), "list[dict[str, Any]]": (list,)}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            allowed = kinds[str(f.type)]
            if isinstance(value, bool) or not isinstance(value, allowed):
                raise ConfigError(f"study spec field {f.name!r} = {value!r} should be "
                                  f"{' or '.join(t.__name__ for t in allowed).replace('NoneType', 'null')}")

    def base_config(self) -> dict[str, Any]:
        """TrainConfig overrides every trial shares: defaults of the study, --set values, the budget."""
        dataset = self.fixed.get("dataset", "digits")
        fixed = dict(DEFAULT_FIXED) if dataset == "digits" else {}
        fixed.update(self.fixed)
        fixed["iterations"] = self.max_iters
        # The trial's CPUs are shared by torch's threads and the data-loading processes
        # (a workers value of the wrong type is TrainConfig's to refuse, with its own message).
        workers = fixed.get("workers", 0)
        fixed.setdefault("threads", max(1, int(self.cpus_per_trial) - (workers if isinstance(workers, int) else 0)))
        return fixed

    @functools.cached_property
    def search_space(self) -> SearchSpace:
        """The space named by ``space``, loaded once (a file is read when first asked for)."""
        return get_space(self.space)

    def trial_config(self, sample: Mapping[str, Any]) -> TrainConfig:
        """The TrainConfig of a trial that sampled ``sample``: preset, space's fixed values, study's, sample."""
        return self.search_space.config(sample, self.base_config())

    def paper_config(self) -> TrainConfig:
        """The config of the space's paper point (the reference every study evaluates first)."""
        return self.trial_config(self.search_space.paper_point)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "StudySpec":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def grace_after_ramp_up(grace: int, cfg: TrainConfig) -> tuple[int, str | None]:
    """ASHA's first rung must come after the contrastive loss has started (at the ramp-up).

    Returns the grace period to use and, if it was moved, a sentence that says so.
    """
    uses_contrastive = cfg.contrastive_weight_labeled > 0 or cfg.contrastive_weight_unlabeled > 0
    if not uses_contrastive or grace > cfg.ramp_up:
        return grace, None
    moved = (cfg.ramp_up // cfg.eval_every + 1) * cfg.eval_every
    if moved > cfg.iterations:
        raise ConfigError(f"--grace {grace} ends before the contrastive loss starts at ramp_up = {cfg.ramp_up}, "
                          f"and no evaluation after it fits in --max-iters {cfg.iterations}: "
                          "lower ramp_up (--set ramp_up=...) or raise --max-iters")
    return moved, (f"grace period moved from {grace} to {moved}: the contrastive loss starts at "
                   f"ramp_up = {cfg.ramp_up}, and ASHA must not judge trials before it has acted")


def environment() -> dict[str, Any]:
    """Versions and commit, so that a study can be reproduced later."""
    import optuna
    import pyarrow
    import ray
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
            "optuna": optuna.__version__, "pyarrow": pyarrow.__version__, "git_commit": commit,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_study_json(folder: "Location | Path", spec: StudySpec) -> None:
    payload = {"spec": spec.to_dict(), "environment": environment()}
    (as_location(folder) / "study.json").write_text(json.dumps(payload, indent=2) + "\n")


def read_study_json(folder: "Location | Path") -> StudySpec:
    folder = as_location(folder)
    path = folder / "study.json"
    if not path.is_file():
        raise ConfigError(f"{folder} is not a study folder (no study.json); "
                          "start one with `semiseg-study run --name NAME`")
    try:
        spec = StudySpec.from_dict(json.loads(path.read_text())["spec"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(f"{path} is damaged ({err}); it cannot be resumed") from None
    try:
        return spec.validate()
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
