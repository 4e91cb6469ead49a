"""A study that lives in object storage: moto's S3 server on 127.0.0.1, pyarrow's real S3 client.

One tiny study runs with ``--dir s3://...``; then ``status``, ``report``, ``retrain`` and ``export``
work from the URI alone, a driver with an empty HOME and cache resumes it from another
folder, no object holds the credentials (nor any file the commands leave on this machine: the
driver's working copy of Optuna's database, the exported configs, the local report, Ray's
session logs), ``--replace`` is refused on the bucket and moves a local study aside intact, and
bad locations fail in seconds with one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from conftest import LR_BANK_SPACE as SPACE, S3_SECRET, set_args, study_fixed
from raw_parts import tune_results
from study.optuna_snapshot import SNAPSHOT_FILE
from study.cli import main

SET = set_args(study_fixed(eval_model="student"))


def _objects(fs: pafs.S3FileSystem, prefix: str) -> dict[str, bytes]:
    infos = fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    out = {}
    for info in infos:
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as stream:
                out[info.path] = stream.read()
    return out


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, by its path relative to it, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _holding_secret(*folders: Path) -> list[str]:
    """Every file under ``folders`` whose bytes hold the secret key."""
    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            try:
                if path.is_file() and S3_SECRET.encode() in path.read_bytes():
                    found.append(str(path))
            except OSError:
                pass  # gone meanwhile (Ray rotates its logs) or not readable as a file
    return found


def _ray_session_dir() -> Path:
    """The session folder of this process's Ray (the session's ray_local): its logs/ hold every
    worker's stdout and stderr, every raylet's and GCS's log."""
    import ray._private.worker

    return Path(ray._private.worker._global_node.get_session_dir_path())


def _listed(endpoint: str, bucket: str, prefix: str) -> list[dict]:
    """Every object under ``prefix`` as S3 lists it (key, ETag, ...), folder objects included,
    which a listing through pyarrow shows as folders, not files."""
    boto3 = pytest.importorskip("boto3", reason="boto3 is missing (moto's dependency: pip install -e '.[test]')")
    client = boto3.client("s3", endpoint_url=f"http://{endpoint}", region_name="us-east-1")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item for page in pages for item in page.get("Contents", [])]


def _uploaded_in_parts(endpoint: str, bucket: str, prefix: str) -> list[str]:
    """Keys under ``prefix`` that were written as multipart uploads: their ETag is not the MD5 of
    their bytes, as a single PutObject's is, but a digest of the parts' digests with a count."""
    return [item["Key"] for item in _listed(endpoint, bucket, prefix) if "-" in item["ETag"]]


def _folder_markers(endpoint: str, bucket: str, prefix: str) -> list[str]:
    """Keys under ``prefix`` that name a folder (end in "/"): empty objects that pyarrow writes
    for a folder it makes."""
    return [item["Key"] for item in _listed(endpoint, bucket, prefix) if item["Key"].endswith("/")]


def _fs(endpoint: str) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(endpoint_override=endpoint, scheme="http")


@pytest.fixture(scope="module")
def s3_study(ray_local, s3_server, tmp_path_factory):
    """A finished 3-trial study in s3://studies/team/s3tiny, and everything its commands printed."""
    endpoint, make_bucket = s3_server
    bucket = make_bucket("studies")
    root = bucket.replace("s3://studies", "s3://studies/team")
    work = tmp_path_factory.mktemp("s3work")
    space = work / "tiny.yaml"
    space.write_text(SPACE)
    argv = ["run", "--name", "s3tiny", "--dir", root, "--space", str(space), "--samples", "3", "--max-iters", "12",
            "--grace", "3", "--reduction", "2", "--concurrency", "2", "--checkpoint-every", "0", "--quiet",
            "--set", *SET]
    return endpoint, root, work, argv


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_a_study_in_s3_runs_and_every_command_works_from_the_uri(s3_study, capsys):
    endpoint, root, work, argv = s3_study
    code, out = _run(argv, capsys)
    assert code == 0, out
    assert "3 trials" in out
    fs = _fs(endpoint)
    stored = _objects(fs, "studies/team/s3tiny")
    names = set(stored)
    for wanted in ("study.json", "optuna.db", "asha_rungs.json", "results/trials/trials.parquet"):
        assert f"studies/team/s3tiny/{wanted}" in names, sorted(names)
    assert any(n.startswith("studies/team/s3tiny/results/reports/part-") for n in names)
    assert any("/tune/s3tiny/" in n and "checkpoint" in n for n in names)  # trial checkpoints in the bucket
    assert not any(n.endswith(".tmp") for n in names)
    # Every object, the driver's and the trials' (Tune's checkpoints), went up in one request.
    assert _uploaded_in_parts(endpoint, "studies", "team/s3tiny/") == []

    outputs = [out]
    for command in (["status", "s3tiny", "--dir", root],
                    ["report", "s3tiny", "--dir", root],
                    ["report", "s3tiny", "--dir", root, "-o", str(work / "local.html")],
                    ["export", "s3tiny", "--dir", root, "-o", str(work / "best.json")],
                    ["export", "s3tiny", "--dir", root, "-o", str(work / "best.yaml")],
                    ["retrain", "s3tiny", "--dir", root, "--top", "1", "--seeds", "1", "--quiet"]):
        code, text = _run(command, capsys)
        assert code == 0, (command, text)
        outputs.append(text)
    assert "finished" in outputs[1] or "stopped" in outputs[1]
    assert (work / "local.html").is_file() and json.loads((work / "best.json").read_text())["seed"] == 0
    stored = _objects(fs, "studies/team/s3tiny")
    assert "studies/team/s3tiny/report.html" in stored
    assert any(n.startswith("studies/team/s3tiny/retrain/part-") for n in stored)

    # pyarrow (and pandas through it) read the store from the URI, query options and all.
    uri = root.replace("s3://studies/team", "s3://studies/team/s3tiny/results/reports")
    reports = pads.dataset(uri, format="parquet").to_table().to_pylist()
    keys = [(r["trial_id"], r["iteration"]) for r in reports]
    assert keys and len(keys) == len(set(keys))  # each (trial, iteration) once
    # Tune's own record of each trial (result.json, written by ResultLog into the bucket) agrees.
    logged = tune_results(root.replace("s3://studies/team", "s3://studies/team/s3tiny"))
    assert {(t, r["iteration"]) for t, results in logged.items() for r in results if "val_miou" in r} == set(keys)
    pandas = pytest.importorskip("pandas")
    assert len(pandas.read_parquet("studies/team/s3tiny/results/reports", filesystem=fs)) == len(reports)

    # No object of the study, and no line of output, holds the secret key.
    leaks = [n for n, data in stored.items() if S3_SECRET.encode() in data]
    assert not leaks and not any(S3_SECRET in text for text in outputs)
    # Nor any file the commands left on this machine: the local report, the exported configs (in
    # work), the driver's working copy of Optuna's database (in the cache), Ray's session logs.
    study_id = json.loads(stored["studies/team/s3tiny/study.json"])["spec"]["study_id"]
    cache = Path(os.environ["SEMISEG_CACHE"])
    assert (cache / "optuna" / study_id / SNAPSHOT_FILE).is_file()
    session = _ray_session_dir()
    assert list((session / "logs").glob("worker-*.out"))  # the trials' own output is among the logs
    canary = work / "canary.txt"  # the scan finds the secret where it is, and only there
    canary.write_text(f"key={S3_SECRET}")
    assert _holding_secret(work, cache, session) == [str(canary)]
    canary.unlink()
    _optuna_agrees_with_parquet(stored, work, root)


def _optuna_agrees_with_parquet(stored: dict[str, bytes], work: Path, root: str) -> None:
    """The snapshot in the bucket holds every trial, in the state that Parquet gives it."""
    import optuna

    from study.location import parse
    from study.store import ResultStore

    db = work / "snapshot.db"
    db.write_bytes(stored["studies/team/s3tiny/optuna.db"])
    spec = json.loads(stored["studies/team/s3tiny/study.json"])["spec"]
    study = optuna.load_study(study_name=spec["study_id"], storage=f"sqlite:///{db}")
    trials = ResultStore(parse(root) / "s3tiny", "s3tiny").trials().to_pylist()
    expected = {"finished": "COMPLETE", "stopped": "PRUNED"}
    assert sorted(t.state.name for t in study.trials) == sorted(expected[t["status"]] for t in trials)
    assert len(trials) == 3


def _existing(s3_study, capsys) -> None:
    endpoint, root, work, argv = s3_study
    if not _fs(endpoint).get_file_info("studies/team/s3tiny/study.json").is_file:
        code, out = _run(argv, capsys)
        assert code == 0, out


def test_a_driver_elsewhere_resumes_with_only_the_uri(s3_study, capsys, tmp_path):
    """Another working folder, an empty HOME and an empty cache: the URI is all it has."""
    endpoint, root, work, argv = s3_study
    fs = _fs(endpoint)
    _existing(s3_study, capsys)
    before = pads.dataset("studies/team/s3tiny/results/reports", filesystem=fs, format="parquet").count_rows()
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEMISEG_", "RAY_ADDRESS"))}
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's Unix sockets live under it
    env.update(HOME=str(home), SEMISEG_CACHE=str(home / "cache"), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_TMPDIR=str(ray_tmp), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    try:
        result = subprocess.run([sys.executable, "-m", "study", "run", "--resume", "s3tiny", "--dir", root, "--quiet"],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        # This driver's own files hold no secret either: its cache (the downloaded Optuna copy) and
        # its Ray's session logs.
        assert list(ray_tmp.glob("ray/session_*/logs/*")), sorted(ray_tmp.rglob("*"))[:20]
        leaks = _holding_secret(home, ray_tmp)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not leaks, leaks
    assert "3 trials" in result.stdout
    after = pads.dataset("studies/team/s3tiny/results/reports", filesystem=fs, format="parquet").to_table()
    keys = list(zip(after.column("trial_id").to_pylist(), after.column("iteration").to_pylist()))
    assert len(keys) == len(set(keys)) == before  # nothing stored twice, nothing lost
    assert list((home / "cache" / "optuna").glob(f"*/{SNAPSHOT_FILE}"))  # the snapshot, downloaded into this cache
    assert S3_SECRET not in result.stdout + result.stderr


def test_replace_on_s3_is_refused_in_one_line_and_touches_nothing(s3_study, capsys):
    """An object store has no rename, so --replace could only delete: refused, before Ray, and no
    object of the bucket changes (the live report, started with the study, writes nothing either)."""
    endpoint, root, work, argv = s3_study
    _existing(s3_study, capsys)
    before = _objects(_fs(endpoint), "studies")
    code = main([argv[0], "--replace", "--report-every", "0.1", *argv[1:]])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "already exists" in err and "has no rename" in err, err
    assert "--replace" in err and "choose another --name" in err, err
    assert _objects(_fs(endpoint), "studies") == before  # every object, name and bytes


def test_replace_moves_a_local_study_aside_with_every_file_intact(small_study, tmp_path, capsys, monkeypatch):
    root = tmp_path / "studies"
    shutil.copytree(small_study, root / "tiny")
    before = _files(root / "tiny")
    old_id = json.loads(before["study.json"])["spec"]["study_id"]
    # An earlier study moved aside in the same second: this one goes beside it, never into it.
    monkeypatch.setattr("study.run._stamp", lambda: "20250102-030405")
    (root / "tiny.old-20250102-030405").mkdir()
    (root / "tiny.old-20250102-030405" / "earlier.txt").write_text("an earlier study")
    space = tmp_path / "tiny.yaml"
    space.write_text(SPACE)
    argv = ["run", "--name", "tiny", "--dir", str(root), "--replace", "--space", str(space), "--samples", "1",
            "--max-iters", "3", "--grace", "3", "--scheduler", "fifo", "--report-every", "0.1", "--quiet",
            "--set", *SET]
    code, out = _run(argv, capsys)
    assert code == 0, out
    kept = root / "tiny.old-20250102-030405-2"
    assert f"moved the previous study 'tiny' to {kept}" in out
    assert sorted(p.name for p in root.iterdir()) == ["tiny", "tiny.old-20250102-030405", kept.name]
    assert _files(kept) == before  # every file, by its relative path, byte for byte
    assert _files(root / "tiny.old-20250102-030405") == {"earlier.txt": b"an earlier study"}
    new = json.loads((root / "tiny" / "study.json").read_text())["spec"]
    assert new["study_id"] != old_id and new["samples"] == 1
    assert "1 trials" in out and (root / "tiny" / "report.html").is_file()  # the live report is the new study's


@pytest.mark.parametrize("where, expected", [
    ("foo://bucket/p", "Unrecognized filesystem type"),
    ("s3://studies/p?endpoint_overide=ENDPOINT&scheme=http", "endpoint_overide"),
    ("s3://no-such-bucket/p?endpoint_override=ENDPOINT&scheme=http", "bucket 'no-such-bucket' does not exist"),
    ("s3://studies/p?endpoint_override=127.0.0.1:CLOSED&scheme=http", "does not answer"),
    ("s3://key:secret@studies/p?endpoint_override=ENDPOINT&scheme=http", "credentials in the URI"),
    ("s3://studies/p?endpoint_override=ENDPOINT&scheme=http&secret_key=x", "secret"),
])
@pytest.mark.parametrize("command", ["run", "status"])
def test_a_bad_location_is_one_line_in_seconds_and_creates_nothing(where, expected, command, s3_server, capsys):
    import socket

    endpoint, make_bucket = s3_server
    make_bucket("studies")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    where = where.replace("ENDPOINT", endpoint).replace("CLOSED", str(closed))
    before = set(_objects(_fs(endpoint), "studies"))

    def timed(location: str, *more: str) -> tuple[float, str]:
        argv = (["run", "--name", "bad", "--dir", location, "--samples", "1"] if command == "run" else
                ["status", "bad", "--dir", location]) + list(more)
        started = time.monotonic()
        assert main(argv) == 2
        return time.monotonic() - started, capsys.readouterr().err.strip()

    # The baseline, in this test: the same command on the good bucket, failing just after the
    # location check (an unknown space; a study that is not there), so it pays the same imports,
    # the same connection and the same load as the case measured.
    good = make_bucket("studies").replace("s3://studies", "s3://studies/p")
    baseline, why = timed(good, *(["--space", "no-such-space"] if command == "run" else []))
    assert ("unknown search space 'no-such-space'" if command == "run" else "no study 'bad'") in why, why
    elapsed, err = timed(where)
    assert len(err.splitlines()) == 1 and expected in err, err
    assert "secret" not in err.replace(expected, "") or expected == "secret"
    # Relative to that baseline (a loaded machine slows both): the S3 client's own retries on a
    # closed port, which the check spares us, take 6 s more here (measured without it).
    assert elapsed < 4 * baseline + 3, (elapsed, baseline)
    assert set(_objects(_fs(endpoint), "studies")) == before


def test_wrong_credentials_are_one_line(s3_server, capsys, monkeypatch):
    """moto checks keys only once its IAM has users: a key it never issued is refused."""
    from moto import settings

    from study import location

    endpoint, make_bucket = s3_server
    uri = make_bucket("studies").replace("s3://studies", "s3://studies/p")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    location._filesystem.cache_clear()  # a client made with the right keys must not answer for these
    try:
        assert main(["status", "x", "--dir", uri]) == 2
    finally:
        location._filesystem.cache_clear()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refused" in err and "credentials" in err, err


@pytest.mark.parametrize("url, bare, password", [
    ("postgresql://u:p%40ss@db.example:5432/optuna?sslmode=require", "postgresql://u@db.example:5432/optuna?sslmode=require",
     "p@ss"),
    ("postgresql://u@db/optuna", "postgresql://u@db/optuna", None),
    ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db", None),
])
def test_a_storage_url_is_kept_without_its_password(url, bare, password):
    from study.optuna_storage import split_password

    assert split_password(url) == (bare, password)


def test_the_s3_client_is_one_request_a_file_keeps_the_users_options_and_pickles_as_itself(s3_server):
    import pickle

    from study.location import ObjectStore, parse

    endpoint, make_bucket = s3_server
    uri = make_bucket("client-options")  # s3://client-options?endpoint_override=...&scheme=http
    folder = lambda name, options="": parse(uri.replace("?", f"/{name}?", 1) + options)  # noqa: E731
    plain = folder("a")
    assert isinstance(plain.fs, ObjectStore)
    again = pickle.loads(pickle.dumps(plain.fs))  # as Tune sends it to the trials
    assert isinstance(again, ObjectStore)
    assert again.__reduce__()[1][0]["check_directory_existence_before_creation"] is True
    (plain / "x.json").write_text("{}")
    # A user's own allow_delayed_open stands: false is pyarrow's multipart upload again.
    (folder("b", "&allow_delayed_open=false") / "y.json").write_text("{}")
    assert _uploaded_in_parts(endpoint, "client-options", "a/") == []
    assert _uploaded_in_parts(endpoint, "client-options", "b/") == ["b/y.json"]
    # An option that pyarrow's pickled client would drop keeps pyarrow's own class, option and all.
    kept = folder("c", "&tls_verify_certificates=false")
    assert type(kept.fs) is pafs.S3FileSystem
    (kept / "z.json").write_text("{}")
    assert (kept / "z.json").read_text() == "{}"


def test_tunes_uploads_of_a_tree_make_no_folder_objects_and_its_filesystem_pickles(s3_server, tmp_path):
    """Tune uploads its staging folder (an empty folder per running trial) with pyarrow's
    copy_files; through ``tune_filesystem`` only the files land, with their bytes."""
    import pickle

    from study.location import parse, tune_filesystem

    endpoint, make_bucket = s3_server
    root = parse(make_bucket("tunefiles"))
    (tmp_path / "run_trial_1").mkdir()  # empty, as a running trial's is
    (tmp_path / "run_trial_2" / "checkpoint_000000").mkdir(parents=True)
    (tmp_path / "run_trial_2" / "checkpoint_000000" / "state.pt").write_bytes(b"weights")
    (tmp_path / "experiment_state.json").write_text("{}")
    fs = tune_filesystem(root.fs)
    assert pickle.loads(pickle.dumps(fs)).equals(fs)  # what Tune's trials on other nodes get
    bucket = root.fs_path.split("/")[0]

    for name, through in (("tune", fs), ("plain", root.fs)):
        pafs.copy_files(str(tmp_path), f"{bucket}/{name}", destination_filesystem=through)
        assert (root / name / "run_trial_2" / "checkpoint_000000" / "state.pt").read_bytes() == b"weights"
        assert (root / name / "experiment_state.json").read_text() == "{}"
    assert _folder_markers(endpoint, bucket, "tune/") == []
    assert "plain/run_trial_1/" in _folder_markers(endpoint, bucket, "plain/")  # what it saves
