"""The README and the documentation site say what the code does.

- The site builds with ``mkdocs build --strict``: a broken link, a missing page or an API
  reference to a name that is gone fails (and a test shows that it does).
- Every ``semiseg-study COMMAND --flag`` named in README.md or docs/*.md, in a shell block or in
  inline code, is a flag of that command, and every field of a ``--set key=value`` (or an inline
  ``key=value``) is a TrainConfig field; a bare ``--flag`` must be a flag of some command, of a
  benchmark script, or of a tool named in FOREIGN_FLAGS.
- The README's shell blocks marked ``<!-- runnable -->`` run, in that order, in a fresh folder.

Under CI (CI=true) a missing mkdocs is a failure, not a skip (tests/ci_gate.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from study.cli import _parser
from trainer.config import field_names

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MACHINE_PATHS = re.compile(r"/(work|root|tmp|home)/")
RUNNABLE = "<!-- runnable -->"

# Flags of other tools that the pages name on their own, in inline code.
FOREIGN_FLAGS = {"--shm-size": "docker run", "--head": "ray start", "--no-deps": "pip install",
                 "--strict": "mkdocs build"}
SHELL_LANGS = {"", "sh", "bash", "shell", "console"}


def _need_mkdocs() -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings_handlers") is None:
        # tests/ci_gate.py turns this skip into a failure under CI.
        pytest.skip("mkdocs is not installed: `make install` installs the docs extra (pip install -e '.[docs]')")


# --- the site ---------------------------------------------------------------------------

def _build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], cwd=config.parent, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def test_the_site_builds_strictly_and_names_no_machine_path(tmp_path):
    _need_mkdocs()
    built = _build(REPO / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0, built.stdout + built.stderr
    pages = {p.relative_to(tmp_path / "site").parent.as_posix() for p in (tmp_path / "site").rglob("index.html")}
    assert {"api", "method", "studies", "store", "benchmarks", "troubleshooting"} <= pages, sorted(pages)
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("trainer.fit.fit", "trainer.config.TrainConfig", "search_spaces.space.SearchSpace",
                 "study.store.ResultStore.reports", "study.store.ResultStore.trials"):
        assert f'id="{name}"' in api, f"the API page lacks {name}"
    for page in (tmp_path / "site").rglob("*.html"):
        found = MACHINE_PATHS.search(page.read_text())
        assert not found, f"{page.relative_to(tmp_path)} names a machine path: {found.group(0)}"


def test_the_strict_build_fails_on_a_broken_link_and_on_a_page_left_out(tmp_path):
    """The build above can fail: a copy of the site with one broken link, then one page left out of nav."""
    _need_mkdocs()
    shutil.copytree(REPO / "docs", tmp_path / "docs", ignore=shutil.ignore_patterns("*.py"))
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    api = tmp_path / "docs" / "api.md"  # the copy has no source for mkdocstrings to read: its headings only
    api.write_text("\n".join(line for line in api.read_text().splitlines()
                             if not line.startswith((":::", "    "))))
    assert _build(tmp_path / "mkdocs.yml", tmp_path / "site").returncode == 0

    index = tmp_path / "docs" / "index.md"
    index.write_text(index.read_text() + "\n[gone](no-such-page.md)\n")
    broken = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert broken.returncode != 0 and "no-such-page.md" in broken.stdout + broken.stderr

    index.write_text(index.read_text().replace("\n[gone](no-such-page.md)\n", ""))
    (tmp_path / "docs" / "extra.md").write_text("# A page nobody added to nav\n")
    left_out = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert left_out.returncode != 0 and "extra.md" in left_out.stdout + left_out.stderr


def test_no_page_names_a_machine_path():
    for page in PAGES:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            assert not MACHINE_PATHS.search(line), f"{page.relative_to(REPO)}:{number}: {line.strip()}"


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's toc gives a heading (what mkdocs links to)."""
    import unicodedata

    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode()
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())


def test_the_readmes_links_reach_a_file_and_a_heading_of_it():
    """mkdocs checks the site's links; the README is not part of the site, so this checks its own."""
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert len(local) >= 12, local
    for link in local:
        path, _, anchor = link.partition("#")
        target = REPO / path
        assert target.is_file(), f"README.md links to {link}: no such file"
        if anchor:
            headings = re.findall(r"^#+\s+(.+?)\s*$", target.read_text(), re.M)
            assert anchor in {_slug(h) for h in headings}, f"README.md links to {link}: no such heading"


# --- flags and fields ---------------------------------------------------------------------

@dataclass
class Snippet:
    where: str              # page:line
    text: str
    shell: bool             # a shell block (else inline code)
    context: str | None = None  # the command a table of flags is about ("| `run` flag |")


def snippets(page: Path, root: Path = REPO) -> list[Snippet]:
    """Shell blocks (continuation lines joined, one snippet a line) and the inline code of a Markdown page.

    Inline code is read per paragraph, since a span may wrap onto the next line. A table whose
    header starts with "| `run` flag |" gives its spans that command as their context.
    """
    name, found = page.relative_to(root).as_posix(), []
    fence, lang, block, start = None, "", [], 0
    paragraph: list[tuple[int, str]] = []

    def end_paragraph() -> None:
        if paragraph:
            header = re.match(r"\|\s*`(\w+)` flag\s*\|", paragraph[0][1])
            text = " ".join(line for _, line in paragraph)
            found.extend(Snippet(f"{name}:{paragraph[0][0]}", code, False, header and header.group(1))
                         for code in re.findall(r"`([^`]+)`", text))
            paragraph.clear()

    for number, line in enumerate(page.read_text().splitlines(), 1):
        marker = re.match(r"\s*(```+|~~~+)\s*([\w-]*)", line)
        if fence is None and marker:
            end_paragraph()
            fence, lang, block, start = marker.group(1), marker.group(2).lower(), [], number
        elif fence is not None and line.strip().startswith(fence):
            if lang in SHELL_LANGS:
                joined = "\n".join(block).replace("\\\n", " ")
                found += [Snippet(f"{name}:{start}", text, True) for text in joined.splitlines()]
            fence = None
        elif fence is not None:
            block.append(line)
        elif line.strip():
            paragraph.append((number, line))
        else:
            end_paragraph()
    end_paragraph()
    return found


@dataclass
class Commands:
    """What the code accepts: each command's flags (with their choices) and TrainConfig's fields."""
    flags: dict[str, dict[str, tuple | None]] = field(default_factory=dict)
    scripts: dict[str, set[str]] = field(default_factory=dict)
    fields: set[str] = field(default_factory=set)

    @classmethod
    def of_the_code(cls) -> "Commands":
        commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
        flags = {}
        for name, sub in commands.choices.items():
            help_text = sub.format_help()  # what `semiseg-study NAME --help` prints
            flags[name] = {opt: action.choices for action in sub._actions for opt in action.option_strings
                           if re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", help_text)}
        scripts = {path.relative_to(REPO).as_posix(): _script_flags(path.read_text())
                   for path in (REPO / "benchmarks").glob("*.py")}
        return cls(flags, scripts, field_names())


def _script_flags(source: str) -> set[str]:
    """The flags a benchmark script's argparse declares, read from its source (running it would be slow)."""
    return {flag for match in re.finditer(r"add_argument\(([^)]*)\)", source)
            for flag in re.findall(r"""["'](-{1,2}[\w-]+)["']""", match.group(1))}


def _tokens(text: str) -> list[str]:
    try:
        return shlex.split(text, comments=True)
    except ValueError:  # prose with an apostrophe, not a command line
        return text.split()


def _flag(token: str) -> str | None:
    """The flag a token starts with: `--dir/NAME` names --dir, `--grace=300` --grace; `-1.0` is none."""
    found = re.match(r"-{1,2}[A-Za-z][\w-]*", token)
    return found.group(0) if found else None


def _placeholder(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_]*|\.\.\.", value))


def problems(found: list[Snippet], code: Commands) -> tuple[list[str], int]:
    """What the pages name that the code lacks, and how many command lines were checked."""
    wrong, checked = [], 0
    every_flag = set().union(*code.flags.values(), *code.scripts.values(), FOREIGN_FLAGS)

    def check_args(where: str, command: str, known: dict[str, tuple | None], args: list[str]) -> None:
        setting = False
        for i, token in enumerate(args):
            if token in ("&&", "||", ";", "|", "&"):
                break
            flag = _flag(token)
            if flag:
                setting = flag == "--set"
                if flag not in known:
                    wrong.append(f"{where}: {command} has no flag {flag}")
                    continue
                choices = known[flag]
                value = args[i + 1] if i + 1 < len(args) else ""
                if choices and value and not value.startswith("-") and not _placeholder(value):
                    for choice in value.split("|"):
                        if choice not in map(str, choices):
                            wrong.append(f"{where}: {command} {flag} {choice}: not one of {list(choices)}")
            elif setting:
                check_field(where, token)

    def check_field(where: str, assignment: str) -> None:
        key = assignment.split("=", 1)[0]
        if "=" not in assignment:
            wrong.append(f"{where}: --set {assignment}: not KEY=VALUE")
        elif not _placeholder(key) and key not in code.fields:
            wrong.append(f"{where}: {key}=...: TrainConfig has no field {key!r}")

    for snippet in found:
        tokens = _tokens(snippet.text)
        if not tokens:
            continue
        names = [i for i, t in enumerate(tokens) if t == "semiseg-study" or t.endswith("/semiseg-study")]
        scripts = [i for i, t in enumerate(tokens) if re.fullmatch(r"benchmarks/\w+\.py", t)]
        if names:
            for i in names:
                command = tokens[i + 1] if i + 1 < len(tokens) else None
                if command is None or command.startswith("-"):
                    continue  # the program's name in prose
                if command not in code.flags:
                    wrong.append(f"{snippet.where}: semiseg-study has no command {command!r}")
                    continue
                checked += 1
                check_args(snippet.where, command, code.flags[command], tokens[i + 2:])
        elif scripts:
            for i in scripts:
                script = tokens[i]
                if script not in code.scripts:
                    wrong.append(f"{snippet.where}: there is no {script}")
                    continue
                checked += 1
                check_args(snippet.where, script, dict.fromkeys(code.scripts[script]), tokens[i + 1:])
        elif snippet.shell:
            continue  # another program's command line (ray, pip, python -c, moto_server, ...)
        elif tokens[0] in code.flags and len(tokens) > 1 and tokens[1].startswith("-"):
            checked += 1  # `run --points FILE`, `export --rank`: a command named without the program
            check_args(snippet.where, tokens[0], code.flags[tokens[0]], tokens[1:])
        elif snippet.context in code.flags and _flag(tokens[0]):
            checked += 1  # a span of a table of one command's flags
            check_args(snippet.where, snippet.context, code.flags[snippet.context], tokens)
        elif _flag(tokens[0]) or tokens[0] == "error:":  # a bare flag, or an error message that names flags
            for token in tokens:
                if _flag(token) and _flag(token) not in every_flag:
                    wrong.append(f"{snippet.where}: no command has a flag {_flag(token)}")
            if tokens[0] == "--set":
                for token in tokens[1:]:
                    check_field(snippet.where, token)
        elif all(re.fullmatch(r"[a-z][a-z0-9_]*=(?!=)\S*", t) for t in tokens):  # not `torch==2.13.0`
            for token in tokens:  # `bank_policy=lowest`, `pretrained=none`: a TrainConfig value in prose
                check_field(snippet.where, token)
    return wrong, checked


def test_every_flag_and_field_the_pages_name_exists_in_the_code():
    code = Commands.of_the_code()
    wrong, checked = problems([s for page in PAGES for s in snippets(page)], code)
    assert not wrong, "\n".join(wrong)
    assert checked >= 60, f"only {checked} command lines found: the parser of the pages is broken"


def test_the_flag_check_finds_a_renamed_flag_a_wrong_choice_and_an_unknown_field(tmp_path):
    page = tmp_path / "check.md"
    page.write_text("\n".join([
        "```sh",
        "semiseg-study run --name x --max-iterations 10 \\",
        "    --set bank_sise=16 lr=0.1 --searcher grid",
        "semiseg-study simulate x --scheduler topk    # simulate has topk; run does not",
        "```",
        "Inline: `semiseg-study report x --html out.html`, `retrain --tops 3`, `--no-such-flag`,",
        "`bank_polcy=lowest`, `--set temprature=0.1`.",
        "", "| `run` flag | default |", "|---|---|", "| `--gracee` | 300 |",
    ]))
    wrong, checked = problems(snippets(page, tmp_path), Commands.of_the_code())
    text = "\n".join(wrong)
    for expected in ("run has no flag --max-iterations", "TrainConfig has no field 'bank_sise'",
                     "run --searcher grid: not one of", "report has no flag --html", "retrain has no flag --tops",
                     "no command has a flag --no-such-flag", "no field 'bank_polcy'", "no field 'temprature'",
                     "run has no flag --gracee"):
        assert expected in text, (expected, text)
    assert "lr" not in text and "simulate" not in text and checked == 5


# --- the README's runnable blocks ---------------------------------------------------------------

def runnable_blocks(readme: Path) -> list[str]:
    lines, blocks = readme.read_text().splitlines(), []
    for i, line in enumerate(lines):
        if line.strip() == RUNNABLE:
            assert re.fullmatch(r"```(sh|bash)", lines[i + 1].strip()), f"README.md:{i + 2}: {RUNNABLE} before no sh fence"
            end = next(j for j in range(i + 2, len(lines)) if lines[j].strip() == "```")
            blocks.append("\n".join(lines[i + 2:end]))
    return blocks


def test_the_readmes_runnable_blocks_run_in_a_fresh_folder(tmp_path):
    blocks = runnable_blocks(REPO / "README.md")
    script = "\n".join(blocks)
    assert len(blocks) >= 2 and all(f"semiseg-study {c} " in script for c in ("run", "status", "report")), blocks
    bin_dir = Path(sys.executable).parent
    prelude = "set -euo pipefail\n"
    if not (bin_dir / "semiseg-study").exists():  # a Python without the console script: the same entry point
        prelude += f'semiseg-study() {{ {shlex.quote(sys.executable)} -m study "$@"; }}\n'
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "SEMISEG_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)  # the README's study runs on a local Ray of its own
    work = tmp_path / "fresh"
    work.mkdir()
    done = subprocess.run(["bash", "-c", prelude + script], cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    for name in re.findall(r"semiseg-study report (\S+)", script):
        assert (work / "studies" / name / "report.html").stat().st_size > 100_000, f"no report of {name}"
    if "semiseg-study status " in script:
        assert re.search(r"^trial\s+status\s+best mIoU", done.stdout, re.M), done.stdout
        assert re.search(r"^\w{8}\s+(finished|stopped)\s+\d", done.stdout, re.M), done.stdout
