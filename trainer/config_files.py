"""The files users keep configs in: JSON, YAML (.yaml, .yml) or TOML (.toml), chosen by suffix.

Train configs (``TrainConfig.load``/``save``) and search spaces (``search_spaces/files.py``)
are read here, so both take the same formats with the same rules and error messages.

YAML is read as YAML 1.2 reads it where PyYAML's 1.1 rules would surprise: ``1e-3`` is a float
(1.1 wants ``1.0e-3`` and reads ``1e-3`` as a string), only true and false are booleans (1.1
also turns ``no``, ``on`` and ``y`` into them), and a key given twice is an error instead of
silently the last one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from trainer.atomic import write_text_atomic

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

YAML_SUFFIXES = (".yaml", ".yml")
READABLE = (".json", *YAML_SUFFIXES, ".toml")
WRITABLE = (".json", *YAML_SUFFIXES)  # writing TOML would need another package, for no gain


class ConfigFileError(ValueError):
    """What is wrong with a config file, phrased to follow its path ("is not valid YAML: ..."): the
    caller names the file and what it was for, and raises its own ConfigError."""


def read_document(path: Path, suffixes: tuple[str, ...] = READABLE) -> Any:
    """The parsed contents of ``path`` (any JSON value; the caller checks its shape).

    Raises ConfigFileError for a suffix outside ``suffixes``, a missing or unreadable file, or
    a syntax error (with its line and column where the parser gives them).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in suffixes:
        raise ConfigFileError(f"has an unsupported file type {suffix or '(none)'!r}: expected {', '.join(suffixes)}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigFileError("does not exist") from None
    except UnicodeDecodeError:
        raise ConfigFileError("is not UTF-8 text") from None
    except OSError as err:
        raise ConfigFileError(f"cannot be read: {err.strerror}") from None
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigFileError(f"is not valid JSON: line {err.lineno} column {err.colno}: {err.msg}") from None
    if suffix == ".toml":
        if tomllib is None:
            raise ConfigFileError("needs the tomli package to be read on Python 3.10 (pip install tomli)")
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigFileError(f"is not valid TOML: {err}") from None
    try:
        return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        raise ConfigFileError(f"is not valid YAML: {where}{err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ConfigFileError(f"is not valid YAML: {' '.join(str(err).split())}") from None


def write_document(path: Path, values: dict[str, Any]) -> None:
    """Write ``values`` to ``path`` atomically, as JSON or YAML by its suffix (keys in their order)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = json.dumps(values, indent=2) + "\n"
    elif suffix in YAML_SUFFIXES:
        # Flow style for leaf lists only (``aspp_dilations: [1, 2, 3, 4]``); floats as repr, so they read back exactly.
        text = yaml.safe_dump(values, sort_keys=False, default_flow_style=None, allow_unicode=True)
    else:
        raise ConfigFileError(f"has an unsupported file type {suffix or '(none)'!r} to write: "
                              f"name it {' or '.join(WRITABLE)}")
    write_text_atomic(path, text)


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and exponent floats, and an error on duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key_node.value!r}",
                                                            key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


# A copy of SafeLoader's resolvers, so the changes stay in this subclass.
_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                  list("tTfF"))
_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                                  list("-+0123456789"))
