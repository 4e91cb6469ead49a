"""TrainConfig: paper defaults, validation messages, JSON round trip, presets."""

import json

import pytest

from trainer.config import ConfigError, TrainConfig, parse_assignment, preset


def test_defaults_are_the_papers():
    cfg = TrainConfig()
    assert (cfg.contrastive_weight_labeled, cfg.contrastive_weight_unlabeled, cfg.entropy_weight) == (0.1, 0.1, 0.01)
    assert (cfg.confidence_threshold, cfg.pseudo_label_power, cfg.ramp_up, cfg.bank_size) == (0.95, 6.0, 2000, 256)
    assert (cfg.ema_momentum, cfg.classmix_prob, cfg.momentum, cfg.weight_decay, cfg.lr_power) == (
        0.995, 0.75, 0.9, 5e-4, 0.9)
    assert cfg.lr == 2e-4 and cfg.aspp_dilations == [6, 12, 18, 24] and cfg.bank_policy == "highest"


@pytest.mark.parametrize("changes, words", [
    ({"lr": -0.1}, ["lr", "-0.1", "> 0.0"]),
    ({"bank_size": 0}, ["bank_size", "0", ">= 1"]),
    ({"bank_size": 2.5}, ["bank_size", "2.5", "expected int"]),
    ({"bank_size": True}, ["bank_size", "expected int"]),
    ({"temperature": float("nan")}, ["temperature", "finite"]),
    ({"contrastive_loss": "triplet"}, ["contrastive_loss", "'triplet'", "'paper'", "'infonce'"]),
    ({"batch_unlabeled": 7}, ["batch_unlabeled", "even"]),
    ({"digits_min": 4, "digits_max": 2}, ["digits_min", "digits_max"]),
    ({"device": "tpu"}, ["device", "'tpu'"]),
    ({"dataset": "voc", "pretrained": "none"}, ["data_root"]),
    ({"dataset": "voc", "data_root": "/data"}, ["pretrained", "PATH"]),
    ({"aspp_dilations": [6, 0]}, ["aspp_dilations"]),
])
def test_validation_names_field_value_and_range(changes, words):
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(changes)
    for word in words:
        assert word in str(err.value)


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match="unknown TrainConfig key 'bank_sise'; did you mean 'bank_size'"):
        TrainConfig.from_dict({"bank_sise": 3})


def test_json_round_trip(tmp_path):
    cfg = TrainConfig.from_dict({"lr": 0.05, "contrastive_loss": "infonce", "temperature": 0.2})
    cfg.save(tmp_path / "cfg.json")
    assert TrainConfig.load(tmp_path / "cfg.json") == cfg


def test_partial_json_takes_the_dataset_preset(tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps({"bank_size": 64}))
    cfg = TrainConfig.load(tmp_path / "cfg.json")
    assert cfg.bank_size == 64 and cfg.network == preset("digits").network == "small"


def test_bad_json_names_the_file_and_line(tmp_path):
    (tmp_path / "cfg.json").write_text('{"lr": 0.1,\n "bank_size": }')
    with pytest.raises(ConfigError, match=r"cfg.json is not valid JSON: line 2"):
        TrainConfig.load(tmp_path / "cfg.json")


def test_yaml_and_toml_configs_read_as_their_json(tmp_path):
    as_json = {"lr": 0.001, "weight_decay": 5e-4, "hflip": False, "class_balance": "off", "aspp_dilations": [1, 2, 3]}
    (tmp_path / "cfg.json").write_text(json.dumps(as_json))
    # YAML 1.2 scalars: 1e-3 is a float (PyYAML's 1.1 rules read a string), `off` stays a string.
    (tmp_path / "cfg.yaml").write_text("lr: 1e-3\nweight_decay: 5.0e-4\nhflip: false\nclass_balance: off\n"
                                       "aspp_dilations: [1, 2, 3]\n")
    (tmp_path / "cfg.toml").write_text('lr = 1e-3\nweight_decay = 5e-4\nhflip = false\nclass_balance = "off"\n'
                                       "aspp_dilations = [1, 2, 3]\n")
    expected = TrainConfig.load(tmp_path / "cfg.json")
    assert (expected.lr, expected.class_balance, expected.aspp_dilations) == (0.001, "off", [1, 2, 3])
    for name in ("cfg.yaml", "cfg.toml"):
        assert TrainConfig.load(tmp_path / name) == expected, name


@pytest.mark.parametrize("name", ["saved.json", "saved.yaml", "saved.yml"])
def test_a_saved_config_reads_back_exactly(tmp_path, name):
    cfg = preset("digits").replace(lr=0.007588305549628145, weight_decay=1e-5, ema_momentum=0.9860416804084855,
                                   hflip=True)
    cfg.save(tmp_path / name)
    assert TrainConfig.load(tmp_path / name) == cfg
    if name != "saved.json":
        assert "lr: 0.007588305549628145" in (tmp_path / name).read_text()  # YAML, not JSON in a .yaml file


@pytest.mark.parametrize("name, text, words", [
    ("cfg.yaml", "lr: 0.1\nbank_size: 64\nlr: 0.2\n", "cfg.yaml is not valid YAML: line 3 column 1: duplicate key 'lr'"),
    ("cfg.yaml", "lr: [0.1\n", "cfg.yaml is not valid YAML: line 2"),
    ("cfg.yaml", "- lr: 0.1\n", "cfg.yaml must hold a mapping of TrainConfig fields, not list"),
    ("cfg.toml", "lr = \n", "cfg.toml is not valid TOML"),
    ("cfg.txt", "lr: 0.1\n", "cfg.txt has an unsupported file type '.txt': expected .json, .yaml, .yml, .toml"),
    ("cfg.yaml", "lr: 0.1\nbank_sise: 64\n", "cfg.yaml: unknown TrainConfig key 'bank_sise'; did you mean 'bank_size'?"),
])
def test_a_bad_config_file_names_the_file_and_what_is_wrong(tmp_path, name, text, words):
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as err:
        TrainConfig.load(tmp_path / name)
    assert words in str(err.value)


def test_a_config_is_written_only_as_json_or_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"cfg.toml has an unsupported file type '.toml' to write: name it "
                                          r"\.json or \.yaml or \.yml"):
        preset("digits").save(tmp_path / "cfg.toml")
    assert not (tmp_path / "cfg.toml").exists()


def test_assignments_parse_json_values():
    assert parse_assignment("lr=0.5") == ("lr", 0.5)
    assert parse_assignment("lr=1") == ("lr", 1.0)
    assert parse_assignment("hflip=false") == ("hflip", False)
    assert parse_assignment("bank_policy=lowest") == ("bank_policy", "lowest")
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_assignment("lr")
