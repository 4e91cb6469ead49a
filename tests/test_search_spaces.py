"""Search spaces: built-ins, the conditional temperature, space files and their errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest

from search_spaces import BUILTIN, SearchSpace, get_space, load_space_file
from trainer.config import ConfigError, TrainConfig, preset

optuna.logging.set_verbosity(optuna.logging.WARNING)

YAML_SPACE = """\
name: my-space
description: "bank, rate and loss"
fixed:
  iterations: 1000
paper_point:
  bank_size: 256
  lr: 0.01
  contrastive_loss: paper
  class_balance: off
  proj_dim: 64
params:
  bank_size: {type: int, low: 32, high: 2048, log: true}
  lr: {type: float, low: 1e-3, high: 0.1, log: true}
  contrastive_loss: {type: categorical, choices: [paper, infonce]}
  temperature: {type: float, low: 0.03, high: 1.0, log: true, when: {contrastive_loss: infonce}}
  class_balance: {type: categorical, choices: [off, batch]}
  proj_dim: {type: int, low: 16, high: 64, step: 16}
groups:
  memory bank: [bank_size, contrastive_loss, temperature]
  balancing: class_balance
"""

TOML_SPACE = """\
name = "my-space"
description = "bank, rate and loss"
[fixed]
iterations = 1000
[paper_point]
bank_size = 256
lr = 0.01
contrastive_loss = "paper"
class_balance = "off"
proj_dim = 64
[params]
bank_size = {type = "int", low = 32, high = 2048, log = true}
lr = {type = "float", low = 0.001, high = 0.1, log = true}
contrastive_loss = {type = "categorical", choices = ["paper", "infonce"]}
temperature = {type = "float", low = 0.03, high = 1.0, log = true, when = {contrastive_loss = "infonce"}}
class_balance = {type = "categorical", choices = ["off", "batch"]}
proj_dim = {type = "int", low = 16, high = 64, step = 16}
[groups]
"memory bank" = ["bank_size", "contrastive_loss", "temperature"]
balancing = ["class_balance"]
"""


def _samples(space: SearchSpace, n: int, seed: int = 3) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [space.suggest(study.ask()) for _ in range(n)]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- built-in spaces ---------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_spaces_give_valid_configs(name: str) -> None:
    space = get_space(name)
    assert space is BUILTIN[name] and space.name == name and space.description
    space.check_keys()
    for values in _samples(space, 10) + [space.paper_point]:
        TrainConfig.from_dict({**space.fixed, **values})


def test_paper_space_searches_nothing() -> None:
    assert _samples(BUILTIN["paper"], 3) == [{}, {}, {}]
    assert BUILTIN["paper"].paper_point == {}


@pytest.mark.parametrize("name", ["default", "contrastive"])
def test_temperature_only_with_infonce(name: str) -> None:
    samples = _samples(BUILTIN[name], 50, seed=11)
    losses = {values["contrastive_loss"] for values in samples}
    assert losses == {"paper", "infonce"}  # both branches were sampled
    for values in samples:
        assert ("temperature" in values) == (values["contrastive_loss"] == "infonce")
        if "temperature" in values:
            assert 0.03 <= values["temperature"] <= 1.0


def test_default_paper_point_is_the_digits_preset() -> None:
    point, digits = BUILTIN["default"].paper_point, preset("digits")
    assert point == {"bank_size": 256, "contrastive_loss": "paper", "contrastive_weight_labeled": 0.1,
                     "contrastive_weight_unlabeled": 0.1, "pseudo_label_weight": 1.0, "class_balance": "off",
                     "entropy_weight": 0.01, "pseudo_label_power": 6.0, "ema_momentum": 0.995, "lr": 0.01}
    # The digits preset balances classes per batch; the paper (VOC) does not, and the point is the paper's.
    assert point["class_balance"] == TrainConfig().class_balance == "off"
    for key, value in point.items():
        if key != "class_balance":
            assert getattr(digits, key) == value, key
    assert set(BUILTIN["contrastive"].paper_point) < set(point)


def test_builtin_spaces_declare_the_methods_groups() -> None:
    groups = BUILTIN["default"].groups
    assert list(groups) == ["memory bank and contrastive loss", "pseudo-labels and teacher", "class balancing",
                            "entropy", "learning rate"]
    grouped = [key for members in groups.values() for key in members]
    searched = {key for values in _samples(BUILTIN["default"], 50, seed=11) for key in values}
    assert sorted(grouped) == sorted(searched)  # every searched param in exactly one group
    assert BUILTIN["contrastive"].groups == {"memory bank and contrastive loss": groups["memory bank and contrastive loss"]}
    assert BUILTIN["paper"].groups == {}


@pytest.mark.parametrize("groups, words", [
    ({"bank": ("bank_sise",)}, ["group 'bank' names 'bank_sise'", "does not search", "did you mean 'bank_size'"]),
    ({"bank": ("bank_size",), "also bank": ("bank_size",)}, ["'bank_size' is in two groups, 'bank' and 'also bank'"]),
    ({"bank": ("bank_size", "bank_size")}, ["'bank_size' is twice in group 'bank'"]),
    ({"bank": ()}, ["group 'bank' must list the params"]),
    ({"bank": "bank_size"}, ["group 'bank' must list the params"]),
    ({"lr": ("lr",)}, ["group 'lr' names 'lr'", "does not search"]),
])
def test_python_space_groups_are_checked(groups: dict, words: list[str]) -> None:
    contrastive = BUILTIN["contrastive"]
    space = SearchSpace("g", "", contrastive.suggest, contrastive.paper_point, {}, groups)
    with pytest.raises(ConfigError) as info:
        space.check_keys()
    for word in words:
        assert word in str(info.value)


def test_python_space_typo_suggests_the_field() -> None:
    space = SearchSpace("typo", "", lambda trial: {"bank_sise": trial.suggest_int("bank_sise", 1, 4)}, {}, {})
    with pytest.raises(ConfigError, match=r"search space 'typo'.*'bank_sise'.*did you mean 'bank_size'"):
        space.check_keys()


def test_check_keys_with_base_overrides() -> None:
    space = BUILTIN["default"]
    space.check_keys(base={"iterations": 100, "lr": 0.5})  # a searched key in base: the sample wins
    with pytest.raises(ConfigError, match="search space 'default': base: unknown TrainConfig key 'bank_sise'"):
        space.check_keys(base={"bank_sise": 64})
    with pytest.raises(ConfigError, match="fixed and base: dataset = 'voc' needs data_root"):
        space.check_keys(base={"dataset": "voc", "pretrained": "none"})


def test_paper_point_must_cover_the_space() -> None:
    suggest = BUILTIN["contrastive"].suggest
    with pytest.raises(ConfigError, match="paper_point gives no value for 'contrastive_weight_unlabeled'"):
        SearchSpace("p", "", suggest, {"bank_size": 256, "contrastive_loss": "paper",
                                       "contrastive_weight_labeled": 0.1}, {}).check_keys()
    point = {**BUILTIN["contrastive"].paper_point, "temperature": 0.1}
    with pytest.raises(ConfigError, match="paper_point sets 'temperature'.*move it to fixed"):
        SearchSpace("p", "", suggest, point, {}).check_keys()
    point = {**BUILTIN["contrastive"].paper_point, "contrastive_loss": "nce"}
    with pytest.raises(ConfigError, match="paper_point does not fit the space: 'nce' not in"):
        SearchSpace("p", "", suggest, point, {}).check_keys()
    point = {**BUILTIN["contrastive"].paper_point, "bank_size": 4096}
    with pytest.raises(ConfigError, match="paper_point bank_size = 4096 is outside"):
        SearchSpace("p", "", suggest, point, {}).check_keys()


# --- space files -------------------------------------------------------------------------

def test_yaml_and_toml_give_the_same_samples(tmp_path: Path) -> None:
    from_yaml = get_space(str(_write(tmp_path, "space.yaml", YAML_SPACE)))
    from_toml = get_space(str(_write(tmp_path, "space.toml", TOML_SPACE)))
    for space in (from_yaml, from_toml):
        assert space.name == "my-space" and space.description == "bank, rate and loss"
        assert space.fixed == {"iterations": 1000}
        assert space.paper_point["class_balance"] == "off"  # YAML 1.2: `off` is a string
        assert space.groups == {"memory bank": ("bank_size", "contrastive_loss", "temperature"),
                                "balancing": ("class_balance",)}
    samples = _samples(from_yaml, 40)
    assert samples == _samples(from_toml, 40)
    assert {values["class_balance"] for values in samples} == {"off", "batch"}
    assert {values["proj_dim"] for values in samples} <= {16, 32, 48, 64}
    for values in samples:
        assert ("temperature" in values) == (values["contrastive_loss"] == "infonce")
        assert 0.001 <= values["lr"] <= 0.1


def test_file_space_defaults_and_pickles(tmp_path: Path) -> None:
    path = _write(tmp_path, "bank.yml", "params:\n  bank_size: {type: int, low: 32, high: 64}\n")
    space = load_space_file(path)
    assert space.name == "bank" and space.fixed == {} and space.paper_point == {}
    copy = pickle.loads(pickle.dumps(space.suggest))
    assert _samples(space, 5) == [copy(trial) for trial in _asked(5)]


def _asked(n: int) -> list[optuna.trial.Trial]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    return [study.ask() for _ in range(n)]


BANK = "  bank_size: {type: int, low: 32, high: 2048, log: true}\n"
BAD_FILES = [
    ("unknown type", "params:\n  lr: {type: double, low: 0.001, high: 0.1}\n",
     ["param 'lr'", "unknown type 'double'"]),
    ("low above high", "params:\n  lr: {type: float, low: 0.1, high: 0.001}\n",
     ["param 'lr'", "low = 0.1 is above high = 0.001"]),
    ("log with low 0", "params:\n  entropy_weight: {type: float, low: 0.0, high: 0.1, log: true}\n",
     ["param 'entropy_weight'", "log: true needs low > 0"]),
    ("int log with low 0", "params:\n  bank_size: {type: int, low: 0, high: 64, log: true}\n",
     ["param 'bank_size'", "needs low >= 1"]),
    ("missing choices", "params:\n  contrastive_loss: {type: categorical}\n",
     ["param 'contrastive_loss'", "missing 'choices'"]),
    ("empty choices", "params:\n  contrastive_loss: {type: categorical, choices: []}\n",
     ["param 'contrastive_loss'", "non-empty list"]),
    ("unknown spec key", "params:\n  lr: {type: float, low: 0.001, high: 0.1, logg: true}\n",
     ["param 'lr'", "unknown key 'logg'", "did you mean 'log'"]),
    ("missing low", "params:\n  lr: {type: float, high: 0.1}\n", ["param 'lr'", "missing 'low'"]),
    ("step with log", "params:\n  bank_size: {type: int, low: 32, high: 64, step: 2, log: true}\n",
     ["param 'bank_size'", "step cannot be combined with log"]),
    ("when unknown param", "params:\n  temperature: {type: float, low: 0.03, high: 1.0, "
     "when: {contrastive_los: infonce}}\n", ["param 'temperature'", "'contrastive_los'", "not a param"]),
    ("when later param", "params:\n  temperature: {type: float, low: 0.03, high: 1.0, "
     "when: {contrastive_loss: infonce}}\n  contrastive_loss: {type: categorical, choices: [paper, infonce]}\n",
     ["param 'temperature'", "'contrastive_loss'", "declared after"]),
    ("when impossible value", "params:\n  contrastive_loss: {type: categorical, choices: [paper, infonce]}\n"
     "  temperature: {type: float, low: 0.03, high: 1.0, when: {contrastive_loss: info}}\n",
     ["param 'temperature'", "'info' can never be sampled"]),
    ("param typo", "params:\n  bank_sise: {type: int, low: 32, high: 64}\n",
     ["param 'bank_sise'", "not a TrainConfig field", "did you mean 'bank_size'"]),
    ("fixed typo", "fixed:\n  bank_sise: 64\nparams:\n" + BANK,
     ["fixed", "'bank_sise'", "did you mean 'bank_size'"]),
    ("paper_point typo", "paper_point:\n  bank_sise: 64\nparams:\n" + BANK,
     ["paper_point", "'bank_sise'", "did you mean 'bank_size'"]),
    ("fixed out of range", "fixed:\n  lr: -1\nparams:\n" + BANK, ["fixed", "lr = -1.0 is out of range"]),
    ("fixed and searched", "fixed:\n  bank_size: 64\nparams:\n" + BANK, ["'bank_size' is both searched and fixed"]),
    ("searched value rejected by TrainConfig", "params:\n  classmix_prob: {type: float, low: 0.5, high: 2.0}\n",
     ["sampled trial", "classmix_prob", "out of range"]),
    ("paper_point outside range", "paper_point:\n  bank_size: 8\nparams:\n" + BANK,
     ["paper_point bank_size = 8 is outside"]),
    ("unknown top-level key", "parms:\n" + BANK, ["unknown top-level key 'parms'", "did you mean 'params'"]),
    ("top level is a list", "- bank_size\n- lr\n", ["mapping at the top level", "not list"]),
    ("empty file", "", ["is empty"]),
    ("params not a mapping", "params: [bank_size]\n", ["params must be a mapping"]),
    ("malformed YAML", "params:\n  lr: {type: float, low: [0.001, high: 0.1}\n", ["not valid YAML", "line 2"]),
    ("duplicate YAML key", "params:\n" + BANK + BANK, ["not valid YAML", "duplicate key 'bank_size'", "line 3"]),
    ("group with an unknown param", "params:\n" + BANK + "groups:\n  bank: [bank_size, bank_sise]\n",
     ["group 'bank'", "'bank_sise' is not a param of this file", "did you mean 'bank_size'"]),
    ("group of a TrainConfig field not searched", "params:\n" + BANK + "groups:\n  rate: [lr]\n",
     ["group 'rate'", "'lr' is not a param of this file", "params: bank_size"]),
    ("param in two groups", "params:\n" + BANK + "groups:\n  a: [bank_size]\n  b: [bank_size]\n",
     ["'bank_size' is in two groups, 'a' and 'b'"]),
    ("empty group", "params:\n" + BANK + "groups:\n  a: []\n", ["group 'a'", "non-empty list"]),
    ("groups not a mapping", "params:\n" + BANK + "groups: [bank_size]\n", ["groups must be a mapping"]),
]


@pytest.mark.parametrize("text, words", [case[1:] for case in BAD_FILES], ids=[case[0] for case in BAD_FILES])
def test_bad_yaml_files(tmp_path: Path, text: str, words: list[str]) -> None:
    path = _write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_space_file(path)
    message = str(info.value)
    assert message.startswith(f"search space file {path}: ") and "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("name, text, words", [
    ("bad.toml", "[params]\nbank_size = {type = int}\n", ["not valid TOML", "line 2"]),
    ("bad.toml", "[params]\nlr = {type = \"float\", low = 0.1, high = 0.01}\n", ["param 'lr'", "is above high"]),
    ("bad.toml", "name = 3\n", ["name = 3", "non-empty string"]),
    ("bad.json", "{}", ["unsupported file type '.json'"]),
])
def test_bad_other_files(tmp_path: Path, name: str, text: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_space_file(_write(tmp_path, name, text))
    assert "\n" not in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_missing_file_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="space.yaml: does not exist"):
        get_space(str(tmp_path / "space.yaml"))
    with pytest.raises(ConfigError, match="unknown search space 'defualt': choose one of paper, default, "
                                          "contrastive.*did you mean 'default'"):
        get_space("defualt")


def test_a_set_value_of_a_searched_param_is_named_as_unused(tmp_path: Path) -> None:
    """``--set bank_size=...`` with a space that samples bank_size: every trial's sample replaces it,
    and the study says so before any trial, naming the param (a conditional one too)."""
    from study.run import check_space
    from study.spec import StudySpec

    fixed = {"image_size": 32, "digits_scenes": 64, "pretrained": "none"}
    notes = check_space(StudySpec(name="s", space="contrastive", fixed={**fixed, "bank_size": 16, "temperature": 0.2}))[2]
    assert [n for n in notes if n.startswith("--set")] == [
        "--set bank_size, temperature: not used, the space 'contrastive' samples them for every trial (a space of "
        "your own can fix or narrow a param: docs/search-spaces.md)"]
    assert not [n for n in check_space(StudySpec(name="s", space="paper", fixed={**fixed, "bank_size": 16}))[2]
                if n.startswith("--set")]
