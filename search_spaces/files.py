"""Search spaces from a user's YAML (.yaml, .yml) or TOML (.toml) file.

A file declares the params to search; every name is a TrainConfig field::

    name: my-space            # optional, defaults to the file name without its suffix
    description: "..."        # optional
    fixed:                    # optional: TrainConfig overrides for every trial
      iterations: 1000
    paper_point:              # optional: the paper's value of every searched param, evaluated first
      bank_size: 256
      lr: 0.01
      contrastive_loss: paper
    params:
      bank_size: {type: int, low: 32, high: 2048, log: true}
      lr: {type: float, low: 0.001, high: 0.1, log: true}
      contrastive_loss: {type: categorical, choices: [paper, infonce]}
      temperature: {type: float, low: 0.03, high: 1.0, log: true, when: {contrastive_loss: infonce}}
    groups:                   # optional: the parts of the method, for `semiseg-study ablate`
      memory bank: [bank_size, contrastive_loss, temperature]
      learning rate: [lr]

The same in TOML::

    name = "my-space"
    [fixed]
    iterations = 1000
    [paper_point]
    bank_size = 256
    lr = 0.01
    contrastive_loss = "paper"
    [params]
    bank_size = {type = "int", low = 32, high = 2048, log = true}
    lr = {type = "float", low = 0.001, high = 0.1, log = true}
    contrastive_loss = {type = "categorical", choices = ["paper", "infonce"]}
    temperature = {type = "float", low = 0.03, high = 1.0, log = true, when = {contrastive_loss = "infonce"}}
    [groups]
    "memory bank" = ["bank_size", "contrastive_loss", "temperature"]
    "learning rate" = ["lr"]

Param types:

- ``int``: ``low``, ``high`` (integers, both included), optional ``log`` (needs low >= 1)
  and ``step`` (not with ``log``; ``high - low`` a multiple of it).
- ``float``: ``low``, ``high``, optional ``log`` (needs low > 0) and ``step`` (not with ``log``).
- ``categorical``: ``choices``, a non-empty list of strings, numbers or booleans.

``when`` makes a param conditional: a mapping of earlier params to the value (or
list of values) each must have; the param is sampled only when all hold. Params
are sampled in file order, so ``when`` may only refer to params declared above.

``paper_point`` must give a value inside the range for every param sampled on its
branch and nothing else (fixed values go in ``fixed``). YAML is read with YAML 1.2
scalars: only true/false are booleans, so ``off``, ``on``, ``yes`` and ``no`` stay
strings (``class_balance: off``), and ``1e-3`` is a number.

``groups`` maps a group name to a list of params of the file, each param in one group at
most. ``ablate`` resets (or adds) one group at a time; a param in no group is a group of its
own there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import optuna

from search_spaces.space import SearchSpace
from trainer.config import ConfigError, did_you_mean, field_names
from trainer.config_files import YAML_SUFFIXES, ConfigFileError, read_document

SUFFIXES = (*YAML_SUFFIXES, ".toml")
TOP_KEYS = ("name", "description", "fixed", "paper_point", "params", "groups")
_NUMERIC_KEYS = ("type", "low", "high", "log", "step", "when")
SPEC_KEYS = {"int": _NUMERIC_KEYS, "float": _NUMERIC_KEYS, "categorical": ("type", "choices", "when")}


@dataclass(frozen=True)
class _Param:
    """One declared param; ``when`` is ((earlier param, allowed values), ...)."""

    name: str
    kind: str
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: tuple = ()
    when: tuple[tuple[str, tuple], ...] = ()

    def active(self, values: dict[str, Any]) -> bool:
        return all(ref in values and values[ref] in allowed for ref, allowed in self.when)

    def sample(self, trial: optuna.trial.BaseTrial) -> Any:
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))


@dataclass(frozen=True)
class FileSuggest:
    """The define-by-run function of a file: an object, not a closure, so it pickles to workers."""

    params: tuple[_Param, ...]

    def __call__(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for param in self.params:
            if param.active(values):
                values[param.name] = param.sample(trial)
        return values


def load_space_file(path: str | Path) -> SearchSpace:
    """Read and check a space file; any problem is one ConfigError line naming the file."""
    path = Path(path)
    data = _read(path)
    unknown = [key for key in data if key not in TOP_KEYS]
    if unknown:
        _fail(path, f"unknown top-level key {unknown[0]!r}{did_you_mean(str(unknown[0]), TOP_KEYS)} "
                    f"(allowed: {', '.join(TOP_KEYS)})")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name:
        _fail(path, f"name = {name!r}: expected a non-empty string")
    description = data.get("description", f"search space from {path.name}")
    if not isinstance(description, str):
        _fail(path, f"description = {description!r}: expected a string")
    fixed, paper_point, specs = (_mapping(path, data, key) for key in ("fixed", "paper_point", "params"))
    params: dict[str, _Param] = {}
    for param_name, spec in specs.items():
        params[param_name] = _parse_param(path, str(param_name), spec, params, list(specs))
    groups = _parse_groups(path, _mapping(path, data, "groups"), list(params))
    space = SearchSpace(name=name, description=description, suggest=FileSuggest(tuple(params.values())),
                        paper_point=paper_point, fixed=fixed, groups=groups)
    try:
        space.check_keys()
    except ConfigError as err:
        _fail(path, str(err).removeprefix(f"search space {name!r}: "))
    return space


# --- reading ------------------------------------------------------------------------------

def _fail(path: Path, message: str) -> NoReturn:
    raise ConfigError(f"search space file {path}: {message}")


def _read(path: Path) -> dict:
    try:
        data = read_document(path, SUFFIXES)
    except ConfigFileError as err:
        _fail(path, str(err))
    if data is None:
        _fail(path, "is empty: expected at least a 'params' mapping")
    if not isinstance(data, dict):
        _fail(path, f"must hold a mapping at the top level (keys {', '.join(TOP_KEYS)}), "
                    f"not {type(data).__name__}")
    return data


def _mapping(path: Path, data: dict, key: str) -> dict:
    value = data.get(key, {})
    if value is None:  # `fixed:` with nothing under it in YAML
        return {}
    if not isinstance(value, dict):
        _fail(path, f"{key} must be a mapping, not {type(value).__name__}")
    return dict(value)


# --- params ------------------------------------------------------------------------------

def _parse_groups(path: Path, groups: dict, declared: list[str]) -> dict[str, tuple[str, ...]]:
    """Each group a list of this file's params (SearchSpace.check_groups refuses overlaps)."""
    parsed: dict[str, tuple[str, ...]] = {}
    for group, members in groups.items():
        if isinstance(members, str):
            members = [members]  # `learning rate: lr` means the one-param list
        if not isinstance(members, list) or not members:
            _fail(path, f"group {group!r}: expected a non-empty list of params, e.g. [bank_size, temperature], "
                        f"not {members!r}")
        for member in members:
            if member not in declared:
                _fail(path, f"group {group!r}: {member!r} is not a param of this file"
                            f"{did_you_mean(str(member), declared)} (params: {', '.join(declared) or 'none'})")
        parsed[str(group)] = tuple(members)
    return parsed


def _parse_param(path: Path, name: str, spec: Any, earlier: dict[str, _Param], declared: list[str]) -> _Param:
    def fail(message: str) -> NoReturn:
        _fail(path, f"param {name!r}: {message}")

    if name not in field_names():
        fail(f"not a TrainConfig field{did_you_mean(name, field_names())}")
    if not isinstance(spec, dict):
        fail(f"expected a mapping such as {{type: float, low: 0.001, high: 0.1}}, not {spec!r}")
    kind = spec.get("type")
    if kind is None:
        fail("missing 'type' (int, float or categorical)")
    if not isinstance(kind, str) or kind not in SPEC_KEYS:
        fail(f"unknown type {kind!r}{did_you_mean(str(kind), SPEC_KEYS)} (use int, float or categorical)")
    for key in spec:
        if key not in SPEC_KEYS[kind]:
            fail(f"unknown key {key!r} for type {kind}{did_you_mean(str(key), SPEC_KEYS[kind])} "
                 f"(allowed: {', '.join(SPEC_KEYS[kind])})")
    when = _parse_when(fail, spec.get("when"), earlier, declared)
    if kind == "categorical":
        return _Param(name, kind, choices=_parse_choices(fail, spec.get("choices")), when=when)
    return _parse_range(fail, name, kind, spec, when)


def _parse_choices(fail: Any, choices: Any) -> tuple:
    if choices is None:
        fail("missing 'choices' (a non-empty list)")
    if not isinstance(choices, list) or not choices:
        fail(f"'choices' must be a non-empty list, not {choices!r}")
    for choice in choices:
        if not isinstance(choice, (str, int, float, bool)):
            fail(f"choice {choice!r} must be a string, a number or a boolean")
    if len(set(map(repr, choices))) < len(choices):
        fail(f"'choices' {choices!r} has a repeated value")
    return tuple(choices)


def _parse_range(fail: Any, name: str, kind: str, spec: dict, when: tuple) -> _Param:
    number = int if kind == "int" else (int, float)
    bounds = {}
    for key in ("low", "high"):
        if key not in spec:
            fail(f"missing {key!r}")
        value = spec[key]
        if isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value):
            fail(f"{key} = {value!r} must be {'an integer' if kind == 'int' else 'a finite number'}")
        bounds[key] = value
    low, high = bounds["low"], bounds["high"]
    if low > high:
        fail(f"low = {low} is above high = {high}")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        fail(f"log = {log!r} must be true or false")
    if log and kind == "int" and low < 1:
        fail(f"log: true needs low >= 1 for an int, got low = {low}")
    if log and low <= 0:
        fail(f"log: true needs low > 0, got low = {low}")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, number) or not step > 0:
            fail(f"step = {step!r} must be a positive {'integer' if kind == 'int' else 'number'}")
        if log:
            fail("step cannot be combined with log: true")
        steps = (high - low) / step
        if abs(steps - round(steps)) > 1e-8 * max(1.0, steps):
            fail(f"high - low = {high - low} is not a multiple of step = {step}")
    return _Param(name, kind, low=low, high=high, log=log, step=step, when=when)


def _parse_when(fail: Any, when: Any, earlier: dict[str, _Param], declared: list[str]) -> tuple:
    if when is None:
        return ()
    if not isinstance(when, dict) or not when:
        fail(f"'when' must map earlier params to a value or a list of values, not {when!r}")
    conditions = []
    for ref, allowed in when.items():
        if ref not in earlier:
            if ref in declared:
                fail(f"'when' refers to {ref!r}, which is declared after it: move {ref!r} above")
            fail(f"'when' refers to {ref!r}, which is not a param of this file{did_you_mean(str(ref), declared)}")
        values = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        if not values:
            fail(f"'when' gives no value for {ref!r}")
        for value in values:
            if not _possible(earlier[ref], value):
                fail(f"'when' value {value!r} can never be sampled for {ref!r}")
        conditions.append((ref, values))
    return tuple(conditions)


def _possible(param: _Param, value: Any) -> bool:
    if param.kind == "categorical":
        return any(choice == value and type(choice) is type(value) for choice in param.choices)
    return not isinstance(value, bool) and isinstance(value, (int, float)) and param.low <= value <= param.high
