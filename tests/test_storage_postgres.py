"""``--storage postgresql://user:password@host/db`` against a real PostgreSQL server on 127.0.0.1.

The test starts Debian's PostgreSQL (``initdb`` + ``pg_ctl``; as root, under ``runuser`` as the
``postgres`` user, or a system user it creates where there is none) in a temporary folder, runs
a tiny study with the password in the URL, checks that no file of the study and no output holds
the password, and resumes it with the password from PGPASSWORD.
"""

from __future__ import annotations

import functools
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import tiny_overrides
from study.cli import main

PASSWORD = "pg-secret-9d2f41"
SET = [f"{k}={json.dumps(v)}" for k, v in tiny_overrides(eval_every=3).items() if k != "iterations"]


SERVER_USERS = ("postgres", "semiseg-pg")  # Debian's, else one this test makes (as root, once)


def _server_user() -> str | None:
    """Who runs initdb and the server: this user, or as root (they refuse root) Debian's postgres
    user, else a system user this test creates, so the test runs as root on any machine."""
    if os.geteuid() != 0:
        return None
    for name in SERVER_USERS:
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    name = SERVER_USERS[-1]
    made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                          capture_output=True, text=True, timeout=60)
    if made.returncode != 0:
        pytest.skip(f"running as root without a postgres user, and `useradd {name}` failed: {made.stderr.strip()}")
    return name


def _as(user: str | None, *argv: str) -> list[str]:
    return list(argv) if user is None else ["runuser", "-u", user, "--", *argv]


def _postgres_tool(name: str) -> str | None:
    """A server tool on PATH, else in Debian's /usr/lib/postgresql/VERSION/bin (not on PATH), newest first."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]),
                        reverse=True) if Path("/usr/lib/postgresql").is_dir() else []
    return str(candidates[0]) if candidates else None


@pytest.fixture(scope="module")
def postgres():
    tools = {n: _postgres_tool(n) for n in ("initdb", "pg_ctl", "psql")}
    missing = [n for n, path in tools.items() if not path]
    if missing:  # a failure under CI (tests/ci_gate.py)
        pytest.skip(f"PostgreSQL's {', '.join(missing)} not found (Debian: apt-get install postgresql; `make test` "
                    "does it)")
    initdb, pg_ctl, psql = tools.values()
    user = _server_user()
    _as_postgres = functools.partial(_as, user)
    folder = Path(tempfile.mkdtemp(prefix="semiseg-pg-"))  # not under pytest's root-only tmp folders
    if user:
        shutil.chown(folder, user)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = folder / "data"
    subprocess.run(_as_postgres(initdb, "-D", str(data), "-U", "postgres", "--auth-local=trust",
                                "--auth-host=scram-sha-256"), check=True, capture_output=True, timeout=120)
    subprocess.run(_as_postgres(pg_ctl, "-D", str(data), "-w", "-l", str(folder / "log"), "-o",
                                f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"),
                   check=True, capture_output=True, timeout=120)
    try:
        sql = f"create user semiseg password '{PASSWORD}'; create database optuna owner semiseg;"
        for statement in sql.split("; "):
            subprocess.run(_as_postgres(psql, "-h", str(folder), "-p", str(port), "-U", "postgres", "-c", statement),
                           check=True, capture_output=True, timeout=60)
        yield port
    finally:
        subprocess.run(_as_postgres(pg_ctl, "-D", str(data), "-m", "immediate", "stop"), capture_output=True,
                       timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def test_the_password_is_used_never_stored_and_resume_takes_it_from_pgpassword(
        ray_local, postgres, tmp_path, capsys, monkeypatch):
    import optuna

    monkeypatch.delenv("PGPASSWORD", raising=False)
    url = f"postgresql://semiseg:{PASSWORD}@127.0.0.1:{postgres}/optuna"
    argv = ["run", "--name", "pg", "--dir", str(tmp_path), "--storage", url, "--samples", "2", "--max-iters", "6", "--grace", "3",
            "--scheduler", "fifo", "--concurrency", "2", "--quiet", "--set", *SET]
    assert main(argv) == 0
    out = capsys.readouterr()
    spec = json.loads((tmp_path / "pg" / "study.json").read_text())["spec"]
    assert spec["storage"] == f"postgresql://semiseg@127.0.0.1:{postgres}/optuna"
    leaks = [p for p in (tmp_path / "pg").rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()]
    assert not leaks and PASSWORD not in out.out + out.err
    assert f"Optuna records the trials in {spec['storage']} as study {spec['study_id']!r}" in out.out

    # Without the password anywhere, the resume says where to put it, in one line.
    assert main(["run", "--resume", "pg", "--dir", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "PGPASSWORD" in err and PASSWORD not in err, err

    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    assert main(["run", "--resume", "pg", "--dir", str(tmp_path), "--quiet"]) == 0
    assert "2 trials" in capsys.readouterr().out
    study = optuna.load_study(study_name=spec["study_id"], storage=f"postgresql://semiseg@127.0.0.1:{postgres}/optuna")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
