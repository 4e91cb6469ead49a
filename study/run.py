"""Run (or resume) a study: Ray Tune schedules the trials, Optuna samples, ASHA stops early.

``run_study(spec, root)`` is the whole job: it connects to Ray, builds the searcher and
the scheduler, runs the Tuner with a callback that writes every report to Parquet and
shows progress, and returns a summary of the best trial.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import sys
import tempfile
import uuid
import os
import shlex
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from trainer.config import ConfigError, TrainConfig, first_line
from study.location import Location, as_location, check_reachable as check_location, tune_filesystem
from study import ray_internals
from study.interrupt import CtrlC, StudyInterrupted
from study.reach import check_nodes_reach
from study.optuna_storage import open_storage, split_password
from study.spec import StudySpec, grace_after_ramp_up, read_study_json, write_study_json

logger = logging.getLogger(__name__)

Say = Callable[[str], None]
DEFAULT_DIR = "studies"  # --dir when none is given: the studies folder of the current directory


def study_folder(root: "str | Path | Location", name: str) -> Location:
    """The location of study ``name`` under ``--dir`` ``root`` (a local folder or a URI)."""
    root = as_location(root)
    return Location(str((root.path / name).resolve())) if root.local else root / name


def check_folder(spec: StudySpec, root: "str | Path | Location", *, resume: bool, replace: bool = False
                 ) -> Location:
    """The study's folder: the one to resume must exist, a new one must not (unless ``replace``)."""
    root = as_location(root)
    folder = study_folder(root, spec.name)
    if resume and not folder.is_dir():
        raise ConfigError(f"study {spec.name!r} does not exist in {root}; nothing to resume")
    taken = not resume and folder.exists()  # one lookup: in a bucket it is two requests
    if taken and not replace:
        raise ConfigError(f"study {spec.name!r} already exists in {root}: resume it with "
                          f"`{resume_command(spec.name, root)}`, or choose another --name")
    if taken and not folder.local:
        raise ConfigError(f"study {spec.name!r} already exists in {root}, and an object store has no rename to "
                          "move it aside with --replace: choose another --name, or delete or copy it yourself")
    if not resume and folder.local:  # fail now, not after Ray has started, on a folder that cannot be made
        folder = folder.path
        ancestor = folder.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            why = "is not a folder" if not ancestor.is_dir() else "is not writable"
            raise ConfigError(f"cannot create the study folder {folder}: {ancestor} {why}")
        return Location(str(folder))
    return folder


def resume_command(name: str, root: "str | Location") -> str:
    """The command that resumes study ``name`` of ``--dir`` ``root``, ready to paste into a shell."""
    where = "" if str(root) == DEFAULT_DIR else f" --dir {shlex.quote(str(root))}"
    return f"semiseg-study run --resume {shlex.quote(name)}{where}"


def create_folder(folder: "Location | Path", say: Say = print) -> None:
    """Make a new study's folder, moving a previous study of that name aside (a study is never deleted)."""
    folder = as_location(folder)
    if not folder.local:
        return  # an object store makes prefixes as objects land (check_folder refused an existing one)
    folder = folder.path
    if folder.exists():
        kept = _aside(folder)
        folder.rename(kept)
        say(f"moved the previous study {folder.name!r} to {kept}")
    try:
        folder.mkdir(parents=True)
    except OSError as err:
        raise ConfigError(f"cannot create the study folder {folder}: {err.strerror}") from None


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _aside(folder: Path) -> Path:
    """A free name beside ``folder``: ``NAME.old-STAMP``, else ``NAME.old-STAMP-2``, ... A second
    --replace within the same second must neither fail on nor merge into the first one's."""
    stamp = _stamp()
    kept, n = folder.with_name(f"{folder.name}.old-{stamp}"), 2
    while kept.exists() or kept.is_symlink():
        kept, n = folder.with_name(f"{folder.name}.old-{stamp}-{n}"), n + 1
    return kept


def check_space(spec: StudySpec) -> tuple[TrainConfig, int, list[str]]:
    """The paper point's config, ASHA's grace period (moved if needed), and what to tell the user
    about them, once the space checks out."""
    cfg = spec.paper_config()
    if cfg.dataset != "digits" and not Path(cfg.data_root).is_dir():
        # Checked on the driver: on a cluster the data must sit at the same path on every node.
        raise ConfigError(f"data_root {cfg.data_root!r} is not a folder on this machine (dataset={cfg.dataset}); "
                          "give the dataset's root with --set data_root=PATH")
    base = spec.base_config()
    searched = spec.search_space.check_keys(base=base)
    for i, point in enumerate(spec.points, start=1):
        spec.search_space.check_point(point, base, what=f"--points entry {i}")
    grace, note = grace_after_ramp_up(spec.grace, cfg)
    notes = [note] if note and spec.scheduler == "asha" else []
    # Each trial's sample takes the place of a --set value of a param the space searches.
    unused = sorted(set(spec.fixed) & searched)
    if unused:
        notes.append(f"--set {', '.join(unused)}: not used, the space {spec.space!r} samples "
                     f"{'it' if len(unused) == 1 else 'them'} for every trial (a space of your own can fix "
                     "or narrow a param: docs/search-spaces.md)")
    return cfg, grace, notes


def run_study(spec: StudySpec, root: "str | Path | Location", *, resume: bool = False, replace: bool = False,
              say: Say = print, progress: bool = True, compact: bool = True,
              on_ready: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run the study to the end and return the summary of its best trial.

    ``compact=False`` leaves the report parts as written (one per stored batch of reports).
    ``on_ready`` is called once the folder is this study's (made, or the one resumed), before
    any trial: what writes into the folder beside the study (the live report) starts there.
    """
    # The password of --storage is used, never stored (study/optuna_storage.py).
    storage, password = split_password(spec.storage)
    root = as_location(root)
    check_location(root)  # an unreachable endpoint, a missing bucket, refused credentials: in seconds
    if not resume:
        spec.storage = storage
    spec = read_study_json(study_folder(root, spec.name)) if resume else spec.validate()
    base_cfg, grace, notes = check_space(spec)
    ray_internals.check_release()
    folder = check_folder(spec, root, resume=resume, replace=replace)
    if spec.storage:
        check_storage(spec.storage, folder, password)  # a bad URL: one line, before Ray and before the folder

    import ray

    owns_ray = connect(spec.address)
    ctrl_c = CtrlC()
    try:
        check_fits(spec)  # before anything is written
        check_nodes_reach(root)  # on a cluster: every node must reach the study (Tune's checkpoints)
        if not resume:
            create_folder(folder, say)
            # A shared --storage may hold an older study of the same name: never continue it by accident.
            spec.study_id = spec.study_id or f"{spec.name}-{uuid.uuid4().hex[:8]}"
            write_study_json(folder, spec)
        if on_ready:
            on_ready()
        for note in notes:
            say(note)
        if spec.storage:
            say(f"Optuna records the trials in {spec.storage} as study {spec.study_id!r}")
        _ensure_pretrained(base_cfg)
        tuner = _tuner(spec, folder, grace, resume, progress, password)
        callback = _store_callback(tuner)
        if callback is not None:  # a restored Tuner's is the pickled one
            callback.ctrl_c, callback.show_progress = ctrl_c, progress
        try:
            with ctrl_c, ray_internals.tune_results_left_unread():
                tuner.fit()
        except KeyboardInterrupt:  # the second Ctrl-C: Tune's last snapshot is what resumes
            if callback is not None:
                callback.mark_unfinished(None)
            ctrl_c.pressed = True
        finally:
            if callback is not None:  # progress held back, should fit have raised past its end
                callback.flush()
    finally:
        if owns_ray:
            ray.shutdown()
    if ctrl_c.pressed:  # the state is saved; compaction can wait for the resumed run
        raise StudyInterrupted(f"study {spec.name!r} was interrupted; `semiseg-study run --resume` continues it")
    from study.store import ResultStore

    # The driver's own store holds the parts it wrote: the compaction need not fetch them back.
    store = callback.store if callback is not None else ResultStore(folder, spec.name)
    if compact:
        store.compact()
    return summary(store)


def check_storage(storage: str, folder: Location, password: str | None) -> None:
    """Open ``--storage`` once and let it go: ConfigError on a URL Optuna cannot open. SQLite is
    left to the study (its file may be meant to sit in the study folder, not made yet)."""
    import sqlalchemy.engine

    try:
        if sqlalchemy.engine.make_url(storage).get_backend_name() == "sqlite":
            return
    except Exception:  # noqa: BLE001 - not a database URL at all: opening it says so, in one line
        pass
    opened = open_storage(storage, folder, "", resume=False, password=password)
    opened.engine.dispose()


def connect(address: str | None) -> bool:
    """Start or join Ray; True if this call started it (and so must stop it)."""
    import ray

    if address:  # first: an address that nothing answers is wrong whether or not Ray runs here
        check_reachable(address)
    # Read by Tune when a study's fit starts: set here whether or not Ray runs already (a notebook
    # or a benchmark that started it), so that every study runs the same way.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune snapshots the experiment every 10 s or more by default; a driver killed in between
    # loses the trials started since. Every 2 s keeps that window small (on an object store a
    # snapshot costs about a dozen requests: docs/benchmarks.md, "Object storage").
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    if ray.is_initialized():
        return False
    common = {"logging_level": logging.WARNING, "log_to_driver": False, "configure_logging": True}
    if address:
        try:
            with _held_stderr():
                ray.init(address=address, **common)
        except ConnectionError as err:
            raise ConfigError(_connect_hint(address, err)) from None
        except Exception as err:  # noqa: BLE001 - Ray raises several kinds for a refused token
            if "auth" in str(err).lower() or "token" in str(err).lower():
                raise ConfigError(_connect_hint(address, err)) from None
            raise
    else:
        # "local": a Ray of this process's own, never the last `ray start` cluster of this machine
        # (which ray.init() would join without a word); a cluster is joined with --address only.
        with _quiet_token_notice():
            ray.init(address="local", include_dashboard=False, **common)
    return True


class _TokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Token authentication is enabled for this Ray cluster")


@contextlib.contextmanager
def _quiet_token_notice() -> Iterator[None]:
    """Ray turns token authentication on for a new local cluster and says so, to a user who never
    started a cluster. It stays on; only the notice goes. (A cluster joined with --address is not
    started here: Ray's token check applies to it unchanged.)"""
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    notice = _TokenNotice()
    log.addFilter(notice)
    try:
        yield
    finally:
        log.removeFilter(notice)


@contextlib.contextmanager
def _held_stderr() -> Iterator[None]:
    """Hold what is written to file descriptor 2 while Ray connects, and pass it on if it connects.

    A cluster that refuses the connection (a missing or wrong token) makes Ray's C++ client log a
    warning a second, for about 20 s, before ray.init gives up: the refusal is then one line of
    ours (the held lines go to the debug log), not a screen of retries.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    connected = False
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
            connected = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read()
            if connected and text:
                os.write(2, text)
            elif text:
                logger.debug("Ray while connecting: %s", text.decode(errors="replace"))


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds on a HOST:PORT nothing listens on; ray.init would retry for minutes."""
    target = address.removeprefix("ray://")
    if address == "auto" or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    if not port.isdigit():
        raise ConfigError(f"--address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConfigError(f"--address {address}: cannot reach a Ray cluster there ({err.strerror or err}); "
                          "start one with `ray start --head --port PORT`, or fix the host and port") from None


def _connect_hint(address: str, err: BaseException) -> str:
    token = ("; the cluster uses token authentication: set RAY_AUTH_TOKEN (see `ray get-auth-token` on the "
             "head node)" if not os.environ.get("RAY_AUTH_TOKEN") else "; check that RAY_AUTH_TOKEN is the "
             "cluster's token")
    return f"--address {address}: Ray refused the connection ({first_line(err)[:300]}){token}"


def _ensure_pretrained(cfg: TrainConfig) -> None:
    """Pretrain the digits backbone once here, not in every trial at the same time."""
    if cfg.dataset == "digits" and cfg.pretrained == "auto" and cfg.network == "small":
        from trainer.data import build_data
        from trainer.pretrain import pretrained_backbone

        pretrained_backbone(cfg.network, cfg.pretrain_steps)
        build_data(cfg)  # and compose the scenes once


WAIT_FOR_NODES_S = 60.0  # an autoscaling cluster may start a node that fits; a fixed one never will


def check_fits(spec: StudySpec, wait_s: float | None = None, poll_s: float = 2.0) -> None:
    """Refuse a study that no node of the cluster can ever run one trial of (Tune would wait forever).

    On a cluster (``--address``) the autoscaler is asked for one trial's resources and given
    ``wait_s`` seconds (default ``WAIT_FOR_NODES_S``) to add a node that holds them; a local Ray
    cannot grow, so it is told at once.
    """
    import ray

    if wait_s is None:
        wait_s = WAIT_FOR_NODES_S if spec.address else 0.0
    need = {"CPU": spec.cpus_per_trial, "GPU": spec.gpus_per_trial}
    need = {k: v for k, v in need.items() if v > 0}

    def fits() -> bool:
        return any(all(node["Resources"].get(k, 0) >= v for k, v in need.items())
                   for node in ray.nodes() if node["Alive"])

    deadline = time.monotonic() + wait_s
    if wait_s > 0 and not fits():
        try:  # a no-op on a cluster without an autoscaler
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[need])
        except Exception as err:  # noqa: BLE001 - best effort; the wait below decides
            logger.debug("request_resources failed: %s", err)
    while not fits():
        if time.monotonic() >= deadline:
            nodes = ", ".join(f"{n['NodeManagerAddress']} ({n['Resources'].get('CPU', 0):g} CPU, "
                              f"{n['Resources'].get('GPU', 0):g} GPU)" for n in ray.nodes() if n["Alive"])
            waited = f" (waited {wait_s:g} s for the autoscaler)" if wait_s else ""
            raise ConfigError(f"no node of the Ray cluster can hold one trial of --cpus-per-trial "
                              f"{spec.cpus_per_trial:g} and --gpus-per-trial {spec.gpus_per_trial:g}{waited}; "
                              f"alive nodes: {nodes or 'none'}; lower those flags or add a node that has them")
        time.sleep(poll_s)


def concurrency(spec: StudySpec) -> int:
    if spec.concurrency:
        return spec.concurrency
    import ray

    resources = ray.cluster_resources()
    slots = math.floor(resources.get("CPU", 1) / spec.cpus_per_trial)
    if spec.gpus_per_trial > 0:
        slots = min(slots, math.floor(resources.get("GPU", 0) / spec.gpus_per_trial))
    return max(1, slots)


def _tuner(spec: StudySpec, folder: Location, grace: int, resume: bool, progress: bool,
           password: str | None = None):
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from study.callbacks import StoreCallback
    from study.search import PersistentASHA, make_sampler, make_searcher
    from study.trial import run_trial

    ray_internals.keep_credentials_out_of_runtime_envs()  # else Ray logs the secret key on every node
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec),
                                    {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial})
    tune_dir = folder / "tune"
    # Tune gets the location's filesystem (it pickles without credentials: every node builds its
    # own client from its own environment), one that makes no folder objects, and the path inside it.
    storage_fs = None if folder.local else tune_filesystem(tune_dir.fs)
    if resume:
        # A --storage that cannot be opened (a missing password) was said in one line before Ray
        # started (check_storage); Tune's unpickled searcher opens it for the study.
        if tune.Tuner.can_restore((tune_dir / spec.name).fs_path, storage_filesystem=storage_fs):
            # Errored trials already used their retries (FailureConfig) and are recorded as failed.
            return tune.Tuner.restore((tune_dir / spec.name).fs_path, trainable=trainable, resume_unfinished=True,
                                      resume_errored=False, storage_filesystem=storage_fs)
        from study.store import ResultStore

        if ResultStore(folder, spec.name).trials().num_rows:
            raise ConfigError(f"study {spec.name!r} cannot be resumed: its trials started but Ray Tune never "
                              f"saved the experiment state in {tune_dir}; start it again with --replace")
    sampler = make_sampler(spec.searcher, spec.seed)
    # A resume that reaches here has no Tune experiment to restore: its Optuna record starts afresh too.
    storage = open_storage(spec.storage, folder, spec.study_id or spec.name, resume=False, password=password)
    searcher = make_searcher(spec.search_space, sampler, storage=storage, study_name=spec.study_id or spec.name,
                             points=spec.points, record=folder)
    if spec.scheduler == "asha":
        # A study that reaches here has no rungs yet (a resume with trials restores Tune's pickled one).
        scheduler = PersistentASHA(folder / "asha_rungs.json", fresh=True, max_t=spec.max_iters,
                                   grace_period=grace, reduction_factor=spec.reduction)
    else:
        scheduler = FIFOScheduler()
    # Tune's automatic loggers include TensorBoard, which kept a writer (and an open file) per
    # trial for the whole study: memory and file handles grew with the trial count. The Parquet
    # store is the record; Tune's JSON results (result.json, read by Tune's own tools) are written
    # by ResultLog into the study's location, not uploaded again at every snapshot.
    from study.result_log import ResultLog

    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    reason = "asha: below the rung's cutoff" if spec.scheduler == "asha" else "time budget"
    result_log = ResultLog(tune_dir / spec.name)
    callback = StoreCallback(folder, spec, show_progress=progress, stop_reason=reason,
                             rungs=scheduler if isinstance(scheduler, PersistentASHA) else None, result_log=result_log)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=spec.samples,
                                    max_concurrent_trials=concurrency(spec), reuse_actors=True,
                                    time_budget_s=spec.time_budget or None),
        run_config=tune.RunConfig(
            name=spec.name, storage_path=tune_dir.fs_path, storage_filesystem=storage_fs, verbose=0,
            callbacks=[callback, result_log],
            # More than one: Tune's snapshot may still name an older checkpoint when a driver dies.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.keep_checkpoints or None),
            failure_config=tune.FailureConfig(max_failures=2)),
    )


def _store_callback(tuner: Any) -> Any:
    """The StoreCallback the Tuner runs here; None under Ray Client, where it runs on the cluster
    (and Ctrl-C reaches the driver as a plain interrupt)."""
    from study.callbacks import StoreCallback

    callbacks = ray_internals.tuner_callbacks(tuner)
    return None if callbacks is None else next(c for c in callbacks if isinstance(c, StoreCallback))


def summary(store: "Any") -> dict[str, Any]:
    """The best trial (rank 1 of ``study.ranking``), read back from Parquet."""
    from study.ranking import ranked_trials

    trials = store.trials().to_pylist()
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    ranked = ranked_trials(trials)
    if not ranked:
        return {"trials": len(trials), "counts": counts, "best": None}
    best = ranked[0]
    return {"trials": len(trials), "counts": counts, "best": best}
