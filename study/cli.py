"""The ``semiseg-study`` command line.

Library code raises; this module turns errors into one clear line on stderr and an
exit code: 2 for bad input (config, arguments), 1 for a run that failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from study.spec import StudySpec
from trainer.config import ConfigError, TrainConfig, field_help, parse_assignment

DIR_HELP = ("folder of the studies, or a URI of an object store that every node reaches, e.g. "
            "s3://bucket/prefix?endpoint_override=HOST:PORT&scheme=http (default: studies)")
EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command ended by Ctrl-C

if TYPE_CHECKING:
    from study.location import Location


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    from study.store import StoreError

    try:
        return args.handler(args)
    except (ConfigError, StoreError) as err:
        print(f"semiseg-study: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as interrupt:
        print(f"semiseg-study: interrupted{f' ({interrupt})' if str(interrupt) else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # a failed run: one line, not a traceback
        print(f"semiseg-study: {args.command} failed: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semiseg-study",
        description="Hyperparameter studies of semi-supervised segmentation with a class-wise memory bank "
                    "(Alonso et al., ICCV 2021).")
    commands = parser.add_subparsers(dest="command")

    train = commands.add_parser("train", help="one training run of the method",
                                description="Train once: preset of the dataset <- --config file <- --set values.")
    train.add_argument("--config", type=Path,
                       help="a TrainConfig file, JSON, YAML or TOML (fields not given keep the dataset preset)")
    train.add_argument("--set", dest="assignments", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                       help="override config fields, e.g. --set lr=0.01 bank_size=512")
    train.add_argument("--out", type=Path, help="output folder (default: runs/train-<time>)")
    train.add_argument("--resume", type=Path, help="continue from a checkpoint.pt written by a previous run")
    train.add_argument("--help-config", action="store_true", help="list every config field and exit")
    train.set_defaults(handler=_train)

    defaults = StudySpec(name="-")
    run = commands.add_parser("run", help="run a hyperparameter study on Ray (local by default)",
                              description="Optuna samples, ASHA stops early, every report lands in Parquet.")
    run.add_argument("--name", help="study name (default: study-<time>); its folder is DIR/NAME")
    run.add_argument("--dir", default="studies", help=DIR_HELP)
    run.add_argument("--resume", metavar="NAME", help="continue the interrupted study NAME with its saved spec")
    run.add_argument("--replace", action="store_true", help="move an existing study of that name aside first")
    run.add_argument("--space", default=defaults.space,
                     help="built-in space name (paper, default, contrastive) or a .yaml/.toml file")
    run.add_argument("--samples", type=int, default=defaults.samples, help="number of trials")
    run.add_argument("--max-iters", type=int, default=defaults.max_iters, help="training iterations of a full trial")
    run.add_argument("--grace", type=int, default=defaults.grace, help="ASHA's first rung, in iterations")
    run.add_argument("--reduction", type=float, default=defaults.reduction, help="ASHA's reduction factor")
    run.add_argument("--searcher", choices=("tpe", "random"), default=defaults.searcher)
    run.add_argument("--scheduler", choices=("asha", "fifo"), default=defaults.scheduler)
    run.add_argument("--address", help="Ray cluster address (e.g. 127.0.0.1:6379, ray://host:10001, auto)")
    run.add_argument("--cpus-per-trial", type=float, default=defaults.cpus_per_trial)
    run.add_argument("--gpus-per-trial", type=float, default=defaults.gpus_per_trial,
                     help="fractions pack trials onto a GPU, e.g. 0.5 runs two per GPU")
    run.add_argument("--concurrency", type=int, default=defaults.concurrency,
                     help="trials at once (default: as many as the resources allow)")
    run.add_argument("--storage", help="Optuna storage URL (default: SQLite in the study folder)")
    run.add_argument("--points", type=Path, metavar="FILE",
                     help="a JSON or YAML list of param values (as the space samples them) to evaluate first, after the "
                          "paper point, e.g. another study's configs on a new --set seed=N")
    run.add_argument("--seed", type=int, default=defaults.seed, help="seed of the sampler")
    run.add_argument("--time-budget", type=float, default=0.0,
                     help="stop the study after this many seconds of wall time (0: none)")
    run.add_argument("--set", dest="assignments", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                     help="TrainConfig values fixed for every trial, e.g. --set dataset=voc data_root=/data")
    run.add_argument("--keep-checkpoints", type=int, default=defaults.keep_checkpoints,
                     help="checkpoints kept per trial (0: all); more makes a killed driver safer to resume")
    run.add_argument("--checkpoint-every", type=float, default=defaults.checkpoint_every, metavar="SECONDS",
                     help="a trial checkpoints at its first evaluation this many seconds after its last checkpoint "
                          "or its start (0: at every evaluation); a trial restarted after a failure replays "
                          "at most this much")
    run.add_argument("--report-every", type=float, default=0.0, metavar="SECONDS",
                     help="rewrite DIR/NAME/report.html this often while the study runs (0: only at the end)")
    run.add_argument("--keep-parts", action="store_true",
                     help="leave the report parts as the driver wrote them (no compaction at the end), to audit "
                          "the record; readers keep one row per (trial, iteration) either way")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(handler=_run)

    status = commands.add_parser("status", help="the trials table of a study, from its Parquet store")
    status.add_argument("name")
    status.add_argument("--dir", default="studies", help=DIR_HELP)
    status.set_defaults(handler=_status)

    report = commands.add_parser("report", help="the study's dashboard: one self-contained HTML page",
                                 description="Plotly figures of the sweep, built from the study's Parquet alone "
                                             "(a study folder copied off a cluster reports anywhere).")
    report.add_argument("name")
    report.add_argument("--dir", default="studies", help=DIR_HELP)
    report.add_argument("-o", "--out", type=Path, help="output file (default: DIR/NAME/report.html)")
    report.add_argument("--compare", nargs="+", default=[], metavar="NAME2",
                        help="studies (in --dir) to put side by side with NAME, e.g. a random+FIFO baseline")
    report.add_argument("--watch", action="store_true",
                        help="rewrite the page every --every seconds until the study has ended (Ctrl-C stops)")
    report.add_argument("--every", type=float, default=30.0, help="seconds between rewrites with --watch")
    report.set_defaults(handler=_report)

    retrain = commands.add_parser("retrain", help="retrain the top configs, the paper point and supervised-only "
                                                  "on fresh seeds; score on the test split",
                                  description="Runs on Ray with the study's resources per trial; results go to "
                                              "DIR/NAME/retrain/ (Parquet); a second call resumes.")
    retrain.add_argument("name")
    retrain.add_argument("--dir", default="studies", help=DIR_HELP)
    retrain.add_argument("--top", type=int, default=3, help="how many of the study's best configs")
    retrain.add_argument("--seeds", type=int, default=3, help="seeds per config (the same seeds for all)")
    retrain.add_argument("--iterations", type=int, help="training iterations (default: each config's full budget)")
    retrain.add_argument("--address", help="Ray cluster address (default: the study's, else a local Ray)")
    retrain.add_argument("--quiet", action="store_true", help="no progress bar")
    retrain.set_defaults(handler=_retrain)

    simulate = commands.add_parser(
        "simulate", help="replay a study's full-budget curves to compare schedules before a big study",
        description="Simulated studies (no training) of one method and of random + FIFO on the same compute: "
                    "each proposed config replays the curve of the study's nearest config that ran to the end.")
    simulate.add_argument("name")
    simulate.add_argument("--dir", default="studies", help=DIR_HELP)
    simulate.add_argument("--searcher", choices=("tpe", "random", "gp"), help="default: the study's")
    simulate.add_argument("--scheduler", choices=("asha", "fifo", "topk"), help="default: the study's")
    simulate.add_argument("--grace", type=int, help="ASHA's first rung (topk: the screening rung); default: the study's")
    simulate.add_argument("--reduction", type=float,
                          help="ASHA's reduction factor (topk: keep 1/REDUCTION); default: the study's")
    simulate.add_argument("--brackets", type=int, default=1, help="ASHA brackets (Hyperband-style when above 1)")
    simulate.add_argument("--workers", type=int, default=2, help="trials at once")
    simulate.add_argument("--curves", choices=("surrogate", "nearest"), default="surrogate",
                          help="how a config the study did not run gets a curve: a Gaussian process fitted on the "
                               "study's curves, or the curve of the nearest config it ran")
    simulate.add_argument("--repeats", type=int, default=20, help="simulated studies per method")
    simulate.add_argument("--samples", type=int,
                          help="compute budget, in full trials of the study on average (default: its --samples)")
    simulate.add_argument("--quiet", action="store_true", help="no progress bar")
    simulate.set_defaults(handler=_simulate)

    ablate = commands.add_parser("ablate", help="what each group of the winner's params is worth and costs: "
                                                "leave one out, add one in, on fresh seeds, scored on test",
                                 description="From the study's best trial: each group of the space's params set back "
                                             "to the paper point (leave one out) and set alone on the paper point "
                                             "(add one in), with the winner and the paper point, on the same seeds. "
                                             "Runs on Ray with the study's resources per trial; results go to "
                                             "DIR/NAME/ablate/ (Parquet); a second call resumes.")
    ablate.add_argument("name")
    ablate.add_argument("--dir", default="studies", help=DIR_HELP)
    ablate.add_argument("--seeds", type=int, default=3, help="seeds per variant (the same seeds for all)")
    ablate.add_argument("--iterations", type=int, help="training iterations (default: the study's full budget)")
    ablate.add_argument("--rank", type=int, default=1, help="the trial to ablate (1 = the best)")
    ablate.add_argument("--address", help="Ray cluster address (default: the study's, else a local Ray)")
    ablate.add_argument("--quiet", action="store_true", help="no progress bar")
    ablate.set_defaults(handler=_ablate)

    export = commands.add_parser("export", help="a trial's config as a TrainConfig file for `train --config`")
    export.add_argument("name")
    export.add_argument("--dir", default="studies", help=DIR_HELP)
    export.add_argument("--rank", type=int, default=1, help="1 = the best trial (finished trials rank first)")
    export.add_argument("-o", "--out", type=Path, required=True,
                        help="the file to write: JSON, or YAML for a .yaml or .yml name")
    export.set_defaults(handler=_export)
    return parser


def _study_folder(dir_text: str, name: str) -> "Location":
    """The location of an existing study: ``--dir`` (a folder or a URI) and its name."""
    from study.location import check_reachable, parse

    root = parse(dir_text)
    check_reachable(root)  # in seconds: an endpoint that does not answer, a missing bucket, bad credentials
    folder = root / name
    if not (folder / "study.json").is_file():
        raise ConfigError(f"no study {name!r} in {root} (no {folder / 'study.json'}); "
                          f"list them with `ls {root}` or pass --dir")
    return folder


def _report(args: argparse.Namespace) -> int:
    from study.records import RUNNING
    from study.report import watch, write_report
    from study.spec import read_study_json
    from study.store import ResultStore

    folder = _study_folder(args.dir, args.name)
    others = [_study_folder(args.dir, name) for name in args.compare]
    out = args.out or folder / "report.html"
    if not args.watch:
        print(f"report: {write_report(folder, out, others)}")
        return 0
    if args.every <= 0:
        raise ConfigError(f"--every {args.every}: give a positive number of seconds")
    samples = read_study_json(folder).samples

    def running() -> bool:
        statuses = ResultStore(folder, args.name).trials().column("status").to_pylist()
        return len(statuses) < samples or RUNNING in statuses

    print(f"writing {out} every {args.every:g} s until the study ends (Ctrl-C stops)")
    watch(folder, out, args.every, others, is_running=running)
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from study.retrain import retrain, table_text

    folder = _study_folder(args.dir, args.name)
    with _resumable("retrain"):
        rows = retrain(folder, top=args.top, seeds=args.seeds, iterations=args.iterations, address=args.address,
                       progress=not args.quiet)
    print(table_text(rows))
    print(f"results: {folder / 'retrain'} (the report shows them: `semiseg-study report {args.name}`)")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from study.simulate import method_from_flags
    from study.simulate.efficiency import format_seconds, format_summaries, simulate_study
    from study.spec import grace_after_ramp_up, read_study_json

    folder = _study_folder(args.dir, args.name)
    spec = read_study_json(folder)
    scheduler = args.scheduler or spec.scheduler
    grace = spec.grace if args.grace is None else args.grace
    if scheduler != "fifo":  # replay the rung `run` would use, not one it would refuse
        grace, moved = grace_after_ramp_up(grace, spec.paper_config())
        if moved:
            print(f"{moved} (as `run` would)")
    method = method_from_flags(args.searcher or spec.searcher, scheduler, grace=grace,
                               reduction=spec.reduction if args.reduction is None else args.reduction,
                               brackets=args.brackets)
    result = simulate_study(folder, method, workers=args.workers, repeats=args.repeats,
                            samples=args.samples or spec.samples, progress=not args.quiet, model=args.curves)
    fit = result.fidelity
    print(f"{result.curves} full curves of {args.name}; trial start-up {result.startup_s:.1f} s; compute per "
          f"simulated study {format_seconds(result.budget_s)}; {args.workers} workers, {args.repeats} repeats")
    how = "the curve the surrogate predicts" if args.curves == "surrogate" else "its nearest curve"
    print(f"a new config replays {how}: final val error {100 * fit['mae']:.1f} mIoU on held-out configs "
          f"(the mean of the others: {100 * fit['mae_of_mean']:.1f})")
    print(format_summaries(result.summaries, result.target))
    if all(math.isnan(s.selected_test[1]) for s in result.summaries):
        print(f"selected test mIoU: - since the trials of {args.name} did not score the test split "
              "(a study run with `--set eval_test=true` does, at every evaluation)")
    return 0


def _ablate(args: argparse.Namespace) -> int:
    from study.ablate import ablate, table_text

    folder = _study_folder(args.dir, args.name)
    with _resumable("ablate"):
        rows = ablate(folder, seeds=args.seeds, iterations=args.iterations, rank=args.rank, address=args.address,
                      progress=not args.quiet)
    print(table_text(rows))
    print(f"results: {folder / 'ablate'} (the report shows them: `semiseg-study report {args.name}`)")
    return 0


@contextlib.contextmanager
def _resumable(command: str) -> Iterator[None]:
    """Ctrl-C of a command whose finished runs are stored as they end: say how to go on."""
    try:
        yield
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"{command}: the runs that finished are stored; the same command again trains "
                                "only the others") from None


def _export(args: argparse.Namespace) -> int:
    from study.ranking import export_config

    row, cfg = export_config(_study_folder(args.dir, args.name), args.rank, args.out)
    print(f"trial {row['trial_id']} (rank {args.rank}, {row['status']} at {row['iterations']} iterations, "
          f"best val mIoU {100 * row['best_val_miou']:.1f}, seed {cfg.seed}) -> {args.out}")
    print(f"train it again with: semiseg-study train --config {args.out}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from study.run import run_study

    fixed = dict(parse_assignment(text) for text in args.assignments)
    name = args.resume or args.name or time.strftime("study-%Y%m%d-%H%M%S")
    spec = StudySpec(name=name, space=args.space, samples=args.samples, max_iters=args.max_iters, grace=args.grace,
                     reduction=args.reduction, searcher=args.searcher, scheduler=args.scheduler,
                     address=args.address, cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                     concurrency=args.concurrency, storage=args.storage, seed=args.seed,
                     time_budget=args.time_budget, keep_checkpoints=args.keep_checkpoints,
                     checkpoint_every=args.checkpoint_every, fixed=fixed,
                     points=_read_points(args.points) if args.points else [])
    from study.location import parse

    root = parse(args.dir)
    print(f"study {name!r} in {root / name}" + (" (resuming)" if args.resume else ""))
    try:
        with _live_report(root / name, args.report_every) as start_live_report:
            result = run_study(spec, args.dir, resume=bool(args.resume), replace=args.replace,
                               progress=not args.quiet, compact=not args.keep_parts, on_ready=start_live_report)
    except KeyboardInterrupt:  # the first Ctrl-C saved the study (study/interrupt.py); a second may cut that short
        if not (root / name / "study.json").is_file():
            raise  # stopped before the study was written: nothing to resume
        from study.run import summary
        from study.store import ResultStore

        _print_counts(summary(ResultStore(root / name, name)))
        from study.run import resume_command

        print(f"semiseg-study: interrupted; resume with: {resume_command(name, args.dir)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    _print_counts(result)
    if result["best"] is None:
        print("no trial finished an evaluation")
        return EXIT_FAILED
    best = result["best"]
    print(f"best trial {best['trial_id']}: val mIoU {100 * best['best_val_miou']:.1f} "
          f"({best['status']}, {best['iterations']} iterations)")
    # What the space sampled for it (its branch only), as stored with the trial.
    print("best config: " + json.dumps(json.loads(best.get("params") or "{}"), sort_keys=True))
    print(f"results: {root / name / 'results'}")
    warning = _grace_warning(root / name)
    if warning:
        print(f"warning: {warning}")
    return 0


def _print_counts(result: dict[str, Any]) -> None:
    counts = ", ".join(f"{v} {k}" for k, v in sorted(result.get("counts", {}).items()))
    print(f"{result['trials']} trials: {counts}")


def _grace_warning(folder: Path) -> str | None:
    """The report's flag on a grace period whose rung ranks the final score poorly, for ``run``'s summary."""
    from study.rung_ranks import grace_warning, rung_ranks
    from study.spec import read_study_json
    from study.store import ResultStore

    spec = read_study_json(folder)
    if spec.scheduler != "asha":
        return None
    store = ResultStore(folder, spec.name)
    return grace_warning(rung_ranks(store.reports().to_pylist(), store.trials().to_pylist()), spec.grace)


def _read_points(path: Path) -> list[dict[str, Any]]:
    from trainer.config_files import YAML_SUFFIXES, ConfigFileError, read_document

    try:
        points = read_document(path, (".json", *YAML_SUFFIXES))
    except ConfigFileError as err:
        raise ConfigError(f"--points {path} {err}") from None
    if not isinstance(points, list):
        raise ConfigError(f"--points {path}: expected a JSON list of objects, e.g. [{{\"lr\": 0.01}}]")
    return points


@contextlib.contextmanager
def _live_report(folder: "Location", every: float) -> Iterator[Callable[[], None]]:
    """With ``--report-every``, a thread rewrites the study's report while the study runs.

    It starts when the callable it yields is called: ``run`` calls it once the folder is this
    study's own, so a refused run (a study of that name exists, ``--replace`` on an object store)
    writes no report into another study's folder, and a replaced study is moved aside as it was.
    """
    if every <= 0:
        yield lambda: None
        return
    from study.report import watch

    done = threading.Event()
    thread = threading.Thread(target=watch, args=(folder, folder / "report.html", every),
                              kwargs={"is_running": lambda: not done.is_set(), "say": lambda _: None,
                                      "sleep": done.wait}, daemon=True)

    def begin() -> None:
        if thread.ident is None:
            thread.start()

    try:
        yield begin
    finally:
        done.set()
        if thread.ident is not None:
            thread.join()
            if (folder / "report.html").is_file():
                print(f"report: {folder / 'report.html'}")


def _status(args: argparse.Namespace) -> int:
    from study.store import ResultStore

    folder = _study_folder(args.dir, args.name)
    print(status_table(ResultStore(folder, args.name).trials().to_pylist()))
    return 0


def status_table(trials: list[dict[str, Any]]) -> str:
    """Trials rows as a plain-text table, best val mIoU first (trials without one last)."""
    if not trials:
        return "no trials yet"

    def best(row: dict[str, Any]) -> float:
        value = row.get("best_val_miou")
        return -math.inf if value is None or math.isnan(value) else value

    header = ("trial", "status", "best mIoU", "iterations", "wall s", "stop reason")
    lines = [header]
    for row in sorted(trials, key=best, reverse=True):  # stable: ties keep the table's order
        miou, wall, iterations = row.get("best_val_miou"), row.get("wall_seconds"), row.get("iterations")
        reason, error = row.get("stop_reason") or "", row.get("error") or ""
        if error and error not in reason:  # "raised" alone does not say what went wrong
            reason = f"{reason}: {error}" if reason else error
        lines.append((
            str(row["trial_id"]), str(row.get("status") or ""),
            "-" if miou is None or math.isnan(miou) else f"{100 * miou:.1f}",
            "-" if iterations is None else str(iterations),
            "-" if wall is None else f"{wall:.0f}",
            reason if len(reason) <= 60 else reason[:57] + "...",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    numeric = {2, 3, 4}  # right-aligned so that the digits line up
    return "\n".join("  ".join(cell.rjust(w) if i in numeric else cell.ljust(w)
                                for i, (cell, w) in enumerate(zip(line, widths))).rstrip() for line in lines)


def load_config(config: Path | None, assignments: Sequence[str], resume: Path | None = None) -> TrainConfig:
    """The dataset's preset, then the JSON file (or, without one, the config of the checkpoint
    ``resume`` continues: the run as it was configured), then ``key=value`` overrides, validated."""
    values: dict = {}
    if config is not None:
        values.update(TrainConfig.load(config).to_dict())
    elif resume is not None:
        from trainer.fit import checkpoint_config

        values.update(checkpoint_config(resume))
    for text in assignments:
        key, value = parse_assignment(text)
        values[key] = value
    return TrainConfig.from_dict(values)


def _train(args: argparse.Namespace) -> int:
    if args.help_config:
        for name, text in field_help().items():
            print(f"{name:30s} {text}")
        return 0
    if args.resume and not args.resume.is_file():
        raise ConfigError(f"--resume {args.resume}: no such checkpoint file")
    cfg = load_config(args.config, args.assignments, resume=args.resume)
    out = args.out or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    from trainer.fit import fit

    result = fit(cfg, resume_from=args.resume, out=out, progress=True, final_test=True)
    print(f"final ({cfg.eval_model}): val mIoU {100 * result.val_miou:.1f}  test mIoU {100 * result.test_miou:.1f}  "
          f"in {result.train_seconds:.0f} s of training, {result.fast_path.describe()}; written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
