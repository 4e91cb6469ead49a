"""The records of a study: what one row of each of its Parquet tables holds, defined once.

Four tables, each a folder of Parquet parts (``study/store.py`` writes and reads them):

* ``results/reports/``: one row per trial and evaluation, appended as the driver receives them
  (into a folder of each driver's own, ``driver-<ns>-<hex>/``, until the compaction at the end);
* ``results/trials/``: one row per trial, rewritten as a whole;
* ``retrain/``: one row per retrain run (candidate, seed, iterations);
* ``ablate/``: one row per ablation variant and seed (``study/ablate.py``).

Every part carries ``SCHEMA_VERSION`` as the int16 column ``schema_version`` and as the Parquet
file metadata key ``semiseg_schema_version``. After the fixed columns come the run's config as
flat ``config.<field>`` columns (TrainConfig fields; bool, int64, float64 or string, and a list
value such as ``aspp_dilations`` as a JSON string). Which config columns exist may differ
between parts; ``ResultStore`` unifies them (a missing column reads as null), as does DuckDB's
``read_parquet(..., union_by_name = true)``, whereas ``pyarrow.dataset`` and pandas take the
first part's columns. After ``compact()`` (the end of ``semiseg-study run``) the reports are one
file and every reader sees every column.

The column tables below are generated from the definitions in this module.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from trainer.config import ConfigError, TrainConfig
from trainer.evaluation import LOSS_PARTS, Evaluation

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

# 2: the trials table gained params and distributions. 3: reports gained test_miou and the compute
# columns (devices, device_type), trials gained train_seconds, devices and device_type. 4: retrain
# and ablate rows gained test_confusion and val_preview. 5: every table gained precision and
# channels_last (what amp='auto' and channels_last='auto' became on the run's device).
SCHEMA_VERSION = 5
READS = (2, 3, 4, 5)  # versions this code reads: an older part's missing columns read as null
VERSION_KEY = b"semiseg_schema_version"
TABLE_KEY = b"semiseg_table"  # which table a file holds, so that a misplaced file is caught
CONFIG_PREFIX = "config."

METRIC = "val_miou"  # what the searcher maximises and ASHA compares
# interrupted: cut by Ctrl-C (the study's state was saved); `run --resume` continues it.
RUNNING, FINISHED, STOPPED, ERRORED, INTERRUPTED = STATUSES = ("running", "finished", "stopped", "errored",
                                                              "interrupted")
# The stop_reason of a trial that Tune ended without a result: failed in Optuna, not pruned.
LOST = ("ended without a result from Ray Tune: the time budget ran out, or the driver died before Tune "
        "saved this trial (its place was sampled again)")

_TIMESTAMP = pa.timestamp("ms", tz="UTC")


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    meaning: str
    since: int = 2  # the schema version that added it (parts written before lack it)


@dataclass(frozen=True)
class Table:
    """One table of the store: its fixed columns (config columns follow) and its key."""

    name: str
    key: tuple[str, ...]
    columns: tuple[Column, ...]

    @property
    def fields(self) -> pa.Schema:
        """The fixed columns, without metadata."""
        return pa.schema([(c.name, c.type) for c in self.columns])

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def required(self, version: int) -> list[pa.Field]:
        """The fixed columns a part written at schema ``version`` holds."""
        return [pa.field(c.name, c.type) for c in self.columns if c.since <= version]

    def schema(self, config: Mapping[str, Any] | None = None) -> pa.Schema:
        """The fixed columns, then the ``config.<field>`` columns of ``config``, with our metadata."""
        config_fields = [pa.field(CONFIG_PREFIX + k, infer_type(CONFIG_PREFIX + k, [v])) for k, v in (config or {}).items()]
        return self.with_metadata(pa.schema([*self.fields, *config_fields]))

    def with_metadata(self, schema: pa.Schema) -> pa.Schema:
        return schema.with_metadata({VERSION_KEY: str(SCHEMA_VERSION).encode(), TABLE_KEY: self.name.encode()})

    def describe(self) -> str:
        """The columns as a reStructuredText table: the docs are made from the definitions."""
        rows = [(c.name, _type_name(c.type), c.meaning + (f" (since schema {c.since})" if c.since > 2 else ""))
                for c in self.columns]
        rows.append(("config.<field>", "bool, int64, float64 or string", "the run's TrainConfig, one column "
                     "per field (lists as JSON strings)"))
        widths = [max(len(r[i]) for r in rows + [("column", "type", "meaning")]) for i in range(3)]
        rule = "  ".join("=" * w for w in widths)
        line = lambda r: "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip()  # noqa: E731
        return "\n".join([rule, line(("column", "type", "meaning")), rule, *map(line, rows), rule])


def _type_name(arrow_type: pa.DataType) -> str:
    return str(arrow_type).replace("timestamp[ms, tz=UTC]", "timestamp[ms, UTC]").replace(
        "item: ", "").replace("double", "float64")


_LOSS_MEANINGS = {"supervised": "mean of the loss part since the previous evaluation",
                  "total": "the weighted sum the optimiser saw"}

# What the config's amp and channels_last ('auto' included) became on the run's device.
FAST_PATH = (
    Column("precision", pa.string(), "'bf16' (autocast of the networks) or 'fp32'", since=5),
    Column("channels_last", pa.bool_(), "the networks ran in channels-last memory format", since=5),
)
_FAST_PATH_AS_IN_REPORTS = tuple(Column(c.name, c.type, "as in reports", since=5) for c in FAST_PATH)

# The measured columns of a report: what a trial sends with each evaluation.
MEASURED = (
    Column("val_miou", pa.float64(), "mean IoU on the val split, 0 to 1"),
    Column("iou", pa.list_(pa.float64()), "IoU per class; NaN where a class never occurs"),
    *(Column(f"loss_{part}", pa.float64(), _LOSS_MEANINGS.get(part, "as loss_supervised, for this part"))
      for part in LOSS_PARTS),
    Column("bank_fill", pa.list_(pa.float64()), "per class, fraction of bank_size in use"),
    Column("images_per_second", pa.float64(), "training throughput since the previous evaluation"),
    Column("lr", pa.float64(), "learning rate at the evaluation"),
    Column("train_seconds", pa.float64(), "training time so far, evaluations excluded"),
    Column("test_miou", pa.float64(), "mean IoU on the test split at this evaluation, with eval_test only "
           "(null otherwise; for learning-curve tables, never for selection)", since=3),
    Column("devices", pa.float64(), "CPUs, or GPUs when it trains on a GPU (fractions: shared), of the trial",
           since=3),
    Column("device_type", pa.string(), "'cpu', or 'cuda:<GPU name>'", since=3),
    *FAST_PATH,
)

# Every row says which schema wrote it and which study it belongs to.
_WRITTEN_BY = (Column("schema_version", pa.int16(), "SCHEMA_VERSION of the writer"),
               Column("study", pa.string(), "study name"))

REPORTS = Table("reports", ("trial_id", "iteration"), (
    *_WRITTEN_BY,
    Column("trial_id", pa.string(), "Ray Tune trial id"),
    Column("iteration", pa.int64(), "training iteration of the evaluation"),
    Column("time_total_s", pa.float64(), "wall time of the trial so far, seconds"),
    Column("timestamp", _TIMESTAMP, "when the driver received the report"),
    *MEASURED,
    Column("node", pa.string(), "Ray node (IP/node id) of the trial"),
))

TRIALS = Table("trials", ("trial_id",), (
    *_WRITTEN_BY,
    Column("trial_id", pa.string(), "Ray Tune trial id"),
    Column("status", pa.string(), "one of " + ", ".join(STATUSES)),
    Column("stop_reason", pa.string(), "why it ended early, e.g. 'asha: ...' or 'diverged: loss is nan at ...'"),
    Column("best_val_miou", pa.float64(), "best val mIoU over its evaluations"),
    Column("last_val_miou", pa.float64(), "val mIoU of its last evaluation"),
    Column("iterations", pa.int64(), "iterations reached"),
    Column("wall_seconds", pa.float64(), "wall time of the trial, seconds"),
    Column("error", pa.string(), "the error of an errored trial (one line)"),
    Column("node", pa.string(), "Ray node (IP/node id) of the trial"),
    Column("started", _TIMESTAMP, "when it started (nullable)"),
    Column("ended", _TIMESTAMP, "when it ended (nullable)"),
    Column("params", pa.string(), "JSON: the values the search space sampled, by param name"),
    Column("distributions", pa.string(), "JSON: each sampled param's Optuna distribution "
                                         "(optuna.distributions.distribution_to_json)"),
    Column("retries", pa.int64(), "times Ray restarted the trial from its checkpoint (error or lost node)"),
    Column("train_seconds", pa.float64(), "training time of its last evaluation, evaluations excluded: its compute",
           since=3),
    Column("devices", pa.float64(), "as in reports", since=3),
    Column("device_type", pa.string(), "as in reports", since=3),
    *_FAST_PATH_AS_IN_REPORTS,
))

# What a retrain or ablate run keeps besides its scores: what the report draws (study/previews.py).
PREVIEW_ENTRY = pa.struct([("index", pa.int64()), ("image", pa.binary()), ("label", pa.binary()),
                           ("prediction", pa.binary())])
PICTURES = (
    Column("test_confusion", pa.list_(pa.list_(pa.int64())), "pixel counts of the test scoring, one list per true "
           "class, one count per predicted class (ignored pixels left out): test_miou and test_iou follow from it",
           since=4),
    Column("val_preview", pa.list_(PREVIEW_ENTRY), "the first few val images (the same for every run), each: index "
           "in the val split, the input image (JPEG), its ground truth and the run's prediction (PNGs of uint8 "
           "class ids, 255 = ignore)", since=4),
)

RETRAIN = Table("retrain", ("candidate", "seed", "iterations"), (
    *_WRITTEN_BY,
    Column("candidate", pa.string(), "'#1 <trial id>', 'paper point' or 'supervised only'"),
    Column("source", pa.string(), "the trial id, or 'paper' / 'supervised'"),
    Column("rank", pa.int64(), "the trial's rank in the study (null for the reference points)"),
    Column("seed", pa.int64(), "seed of the run"),
    Column("iterations", pa.int64(), "training iterations of the run"),
    Column("test_miou", pa.float64(), "mean IoU on the test split, 0 to 1"),
    Column("val_miou", pa.float64(), "mean IoU on the val split, 0 to 1"),
    Column("test_iou", pa.list_(pa.float64()), "IoU per class on the test split"),
    Column("train_seconds", pa.float64(), "training time, evaluations excluded"),
    *_FAST_PATH_AS_IN_REPORTS,
    Column("node", pa.string(), "Ray node of the run"),
    Column("timestamp", _TIMESTAMP, "when the driver stored it"),
    *PICTURES,
))

# An ablation plan is a list of variants (the winner, the paper point, each group left out of the
# winner, each group added to the paper point), each run on the same seeds. Two variants can be
# the same config (with two groups, the winner without one is the paper point with the other):
# that run trains once, and each variant gets a row, the second marked shared_run.
ABLATE = Table("ablate", ("run_id", "variant"), (
    *_WRITTEN_BY,
    Column("run_id", pa.string(), "hash of the run's whole config, seed and iterations included: which run it is"),
    Column("variant", pa.string(), "'winner', 'paper point', 'winner without GROUP' or 'paper point with GROUP'"),
    Column("plan", pa.string(), "'reference' (winner, paper point), 'leave out' or 'add in'"),
    Column("group", pa.string(), "the group left out or added (null for the references)"),
    Column("group_params", pa.string(), "JSON list of the group's params (null for the references)"),
    Column("position", pa.int64(), "the variant's place in the plan: 0 winner, 1 paper point, then per group "
                                   "its leave-out and its add-in"),
    Column("winner", pa.string(), "trial id of the study's trial the plan starts from"),
    Column("seed", pa.int64(), "seed of the run"),
    Column("iterations", pa.int64(), "training iterations of the run"),
    Column("test_miou", pa.float64(), "mean IoU on the test split, 0 to 1"),
    Column("val_miou", pa.float64(), "mean IoU on the val split, 0 to 1"),
    Column("test_iou", pa.list_(pa.float64()), "IoU per class on the test split"),
    Column("train_seconds", pa.float64(), "training time, evaluations excluded"),
    Column("seconds_per_iteration", pa.float64(), "train_seconds / iterations: the cost of one step"),
    Column("images_per_second", pa.float64(), "images trained on (labeled + unlabeled) per training second"),
    Column("devices", pa.float64(), "as in reports"),
    Column("device_type", pa.string(), "as in reports"),
    *_FAST_PATH_AS_IN_REPORTS,
    Column("node", pa.string(), "Ray node of the run"),
    Column("diverged", pa.string(), "why the run stopped (loss NaN or inf at iteration K), with NaN scores; "
                                    "null for a run that trained to the end"),
    Column("shared_run", pa.bool_(), "true: the same config as another variant's run, whose numbers it repeats "
                                     "(trained once)"),
    Column("timestamp", _TIMESTAMP, "when the driver stored it"),
    *PICTURES,
))

TABLES = {t.name: t for t in (REPORTS, TRIALS, RETRAIN, ABLATE)}

__doc__ += "".join(f"\n{t.name}, one row per {', '.join(t.key)}:\n\n{t.describe()}\n" for t in TABLES.values())


# --- rows ---------------------------------------------------------------------------------

def evaluation_metrics(evaluation: Evaluation) -> dict[str, Any]:
    """An evaluation on val as the record's ``iteration`` and measured columns (what a trial reports)."""
    if evaluation.split != "val":
        raise ValueError(f"evaluation of split {evaluation.split!r}: the reports table holds val evaluations only")
    unknown = sorted(set(evaluation.losses) - set(LOSS_PARTS))
    if unknown:
        # A new loss part in the trainer needs a column here; dropping it silently would lose it.
        raise ValueError(f"unknown loss part(s) {unknown}; the reports schema has {list(LOSS_PARTS)}")
    values = evaluation.as_dict()
    values.update(val_miou=values.pop("miou"), **{f"loss_{k}": v for k, v in values.pop("losses").items()})
    return {"iteration": evaluation.iteration, **{c.name: values.get(c.name) for c in MEASURED}}


def report_row(study: str, trial_id: str, metrics: Mapping[str, Any], config: Mapping[str, Any], node: str,
               time_total_s: float) -> dict[str, Any]:
    """A reports row: a trial's reported metrics (``evaluation_metrics``) with who, where and when."""
    return {"schema_version": SCHEMA_VERSION, "study": study, "trial_id": trial_id,
            "iteration": int(plain(metrics["iteration"])), "time_total_s": float(time_total_s),
            "timestamp": dt.datetime.now(dt.timezone.utc), **{c.name: metrics.get(c.name) for c in MEASURED},
            "node": node, **config_columns(config)}


def config_columns(config: Mapping[str, Any]) -> dict[str, Any]:
    return {CONFIG_PREFIX + key: value for key, value in config.items()}


def stored_config(row: Mapping[str, Any]) -> TrainConfig:
    """The TrainConfig a stored row ran, from its ``config.<field>`` columns (lists stored as JSON)."""
    list_fields = {f.name for f in fields(TrainConfig) if f.type in ("list", list)}
    values: dict[str, Any] = {}
    for key, value in row.items():
        if key.startswith(CONFIG_PREFIX) and value is not None:
            name = key[len(CONFIG_PREFIX):]
            values[name] = json.loads(value) if name in list_fields and isinstance(value, str) else value
    try:
        return TrainConfig.from_dict(values)
    except ConfigError as err:
        what = row.get("trial_id") or row.get("candidate")
        raise ConfigError(f"{what!r}: its stored config is no longer valid: {err}") from None


def stored_params(row: Mapping[str, Any]) -> dict[str, Any]:
    """The values Optuna sampled for a stored trial row (its ``params`` column); {} without them."""
    return json.loads(row["params"]) if row.get("params") else {}


def stored_distributions(row: Mapping[str, Any]) -> dict[str, "BaseDistribution"]:
    """What each of a stored trial row's params was sampled from (its ``distributions`` column)."""
    from optuna.distributions import json_to_distribution  # optuna only where a row's are read

    return {name: json_to_distribution(json.dumps(dist))
            for name, dist in json.loads(row.get("distributions") or "{}").items()}


# --- rows to an Arrow table ------------------------------------------------------------------

def plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (Tune results often carry numpy numbers)."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes, list, tuple, dict)):
        return value.item()
    return value


def _config_value(value: Any) -> Any:
    value = plain(value)
    # One Parquet column holds one type; a JSON string holds any list and stays greppable.
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else value


def infer_type(column: str, values: Iterable[Any]) -> pa.DataType:
    """The Arrow type of a config column: bool, int64, float64 or string (null when all missing)."""
    kinds = set()
    for value in map(_config_value, values):
        if value is None:
            continue
        kind = next((k for k in (bool, int, float, str) if isinstance(value, k)), None)  # bool first: it is an int
        if kind is None:
            raise ValueError(f"column {column!r}: value {value!r} of type {type(value).__name__} cannot be stored; "
                             "expected bool, int, float, str or a JSON-serialisable list")
        kinds.add(kind)
    if not kinds:
        return pa.null()  # null unifies with whatever type another part has
    # {bool, str}: a switch (true, false or 'auto'), stored as the strings 'true', 'false', 'auto'.
    for allowed, arrow_type in (({bool}, pa.bool_()), ({int}, pa.int64()), ({int, float}, pa.float64()),
                                ({str}, pa.string()), ({bool, str}, pa.string())):
        if kinds <= allowed:
            return arrow_type
    names = ", ".join(sorted(k.__name__ for k in kinds))
    raise ValueError(f"column {column!r} mixes values of types {names}; a column holds one type")


def to_table(rows: list[Mapping[str, Any]], table: Table, study: str) -> pa.Table:
    """Rows as an Arrow table of ``table``'s fixed columns plus the config columns they hold, checked."""
    subject = table.key[0]
    config_names: dict[str, None] = {}  # insertion-ordered: TrainConfig's field order
    for row in rows:
        which = row.get(subject)
        if not isinstance(which, str) or not which:
            raise ValueError(f"{table.name} row without a {subject}: {dict(row)!r:.200}")
        which = f"{table.name} row of {subject.replace('_id', '')} {which!r}"
        for key in row:
            if key.startswith(CONFIG_PREFIX):
                config_names.setdefault(key)
            elif key not in table.names:
                raise ValueError(f"{which} has unknown column {key!r}; expected {', '.join(table.names)} "
                                 "or config.<field>")
        if row.get("schema_version") not in (None, SCHEMA_VERSION):
            raise ValueError(f"{which} has schema_version {row['schema_version']}, this store writes {SCHEMA_VERSION}")
        if row.get("study") not in (None, study):
            raise ValueError(f"{which} belongs to study {row['study']!r}, not to {study!r}")
        if table is TRIALS and row.get("status") not in STATUSES:
            raise ValueError(f"trial {row[subject]!r} has status {row.get('status')!r}; "
                             f"expected one of {', '.join(STATUSES)}")
    constant = {"schema_version": SCHEMA_VERSION, "study": study}
    arrays, schema_fields = [], list(table.fields)
    for f in table.fields:
        try:
            values = [constant[f.name] if f.name in constant else _typed(row.get(f.name), f.type) for row in rows]
            arrays.append(pa.array(values, type=f.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as err:
            raise ValueError(f"{table.name} column {f.name!r} ({f.type}) cannot hold the given values: {err}") from None
    for name in config_names:
        values = [_config_value(row.get(name)) for row in rows]
        column_type = infer_type(name, values)
        arrays.append(pa.array([_typed(v, column_type) for v in values], type=column_type))
        schema_fields.append(pa.field(name, column_type))
    return pa.Table.from_arrays(arrays, schema=table.with_metadata(pa.schema(schema_fields)))


def _typed(value: Any, arrow_type: pa.DataType) -> Any:
    value = plain(value)
    if value is None:
        return None
    if pa.types.is_floating(arrow_type):
        return float(value)
    if pa.types.is_string(arrow_type) and isinstance(value, bool):
        return json.dumps(value)
    if pa.types.is_list(arrow_type) and pa.types.is_floating(arrow_type.value_type):
        return [None if v is None else float(plain(v)) for v in value]
    return value
