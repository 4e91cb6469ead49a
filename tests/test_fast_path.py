"""amp and channels_last: True, False or 'auto', decided on the device and recorded."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from conftest import tiny_overrides
from study.records import CONFIG_PREFIX
from study.store import ResultStore
from trainer import fast_path
from trainer.config import ConfigError, TrainConfig
from trainer.fast_path import choose_fast_path
from trainer.fit import Trainer, fit

CPU = torch.device("cpu")


def _without_bf16_units(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)


def _with_avx512_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)


def test_auto_takes_bf16_and_channels_last_on_a_cpu_with_bf16_units(monkeypatch):
    _with_avx512_bf16(monkeypatch)
    took = choose_fast_path("auto", "auto", CPU)
    assert (took.precision, took.channels_last) == ("bf16", True)
    assert took.describe() == "bf16 + channels-last (auto: AVX-512-bf16)"


def test_auto_stays_fp32_and_contiguous_where_bf16_would_be_emulated(monkeypatch):
    _without_bf16_units(monkeypatch)
    took = choose_fast_path("auto", "auto", CPU)
    assert (took.precision, took.channels_last) == ("fp32", False)
    assert "no bf16 units" in took.reason


def test_explicit_switches_win_over_the_device(monkeypatch):
    _with_avx512_bf16(monkeypatch)
    off = choose_fast_path(False, "auto", CPU)
    assert (off.bf16, off.channels_last) == (False, False)  # channels-last follows the precision
    _without_bf16_units(monkeypatch)
    forced = choose_fast_path(True, False, CPU)
    assert (forced.bf16, forced.channels_last, forced.reason) == (True, False, "set in the config")


def test_the_cpuinfo_flags_answer_when_torch_has_no_probe(monkeypatch, tmp_path):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu sse2 avx512f amx_bf16 amx_tile\n")
    monkeypatch.setattr(fast_path, "CPUINFO", cpuinfo)
    assert fast_path.bf16_support(CPU) == "AMX"
    cpuinfo.write_text("flags\t\t: fpu sse2 avx2\n")
    assert fast_path.bf16_support(CPU) == ""


@pytest.mark.parametrize("given, stored", [("auto", "auto"), (True, True), ("false", False), ("TRUE", True)])
def test_a_switch_takes_true_false_or_auto(given, stored):
    assert TrainConfig.from_dict({"amp": given}).amp == stored


@pytest.mark.parametrize("bad", ["yes", 1, "bf16", None])
def test_any_other_switch_value_is_refused_with_what_is_allowed(bad):
    with pytest.raises(ConfigError, match=r"amp = .*expected true, false or 'auto'"):
        TrainConfig.from_dict({"amp": bad})


def test_the_trainer_builds_its_networks_on_the_path_it_chose(monkeypatch):
    _without_bf16_units(monkeypatch)
    plain = Trainer(TrainConfig.from_dict(tiny_overrides(iterations=1)))
    _with_avx512_bf16(monkeypatch)
    fast = Trainer(TrainConfig.from_dict(tiny_overrides(iterations=1)))
    for trainer, bf16 in ((plain, False), (fast, True)):
        assert trainer.fast_path.bf16 is bf16 and trainer.fast_path.channels_last is bf16
        conv = next(m for m in trainer.student.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) is bf16
        for net in (trainer.student, trainer.teacher):  # the selectors' first-layer products follow
            for selectors in (net.feature_selectors, net.memory_selectors):
                assert selectors.product_dtype == (torch.bfloat16 if bf16 else None)
        seen = []
        hook = trainer.student.backbone.register_forward_hook(lambda m, i, out: seen.append(out[1].dtype))
        trainer.run()
        hook.remove()
        assert seen[0] == (torch.bfloat16 if bf16 else torch.float32)


def test_a_runs_metrics_end_with_the_path_it_took(monkeypatch, tmp_path):
    _without_bf16_units(monkeypatch)
    result = fit(TrainConfig.from_dict(tiny_overrides(iterations=2, eval_every=2)), out=tmp_path)
    last = (tmp_path / "metrics.jsonl").read_text().splitlines()[-1]
    assert '"precision": "fp32"' in last and '"channels_last": false' in last
    assert result.fast_path.precision == "fp32"


def _report(trial: str, config: dict) -> dict:
    from test_store import _row
    return _row(trial, 3, config)


def test_a_switch_column_that_was_bool_and_became_auto_reads_as_strings(tmp_path):
    # A study written before amp could be 'auto' (config.amp bool) and resumed after it.
    store = ResultStore(tmp_path, "s")
    store.append_reports([_report("old", {"amp": False})])
    store.append_reports([_report("new", {"amp": "auto"})])
    table = ResultStore(tmp_path, "s").reports()
    assert table.schema.field(CONFIG_PREFIX + "amp").type == pa.string()
    assert {r["trial_id"]: r[CONFIG_PREFIX + "amp"] for r in table.to_pylist()} == {"old": "false", "new": "auto"}
    stored = {r["trial_id"]: TrainConfig.from_dict({"amp": r[CONFIG_PREFIX + "amp"]}).amp for r in table.to_pylist()}
    assert stored == {"old": False, "new": "auto"}  # the strings read back as the switch they were


def test_one_part_that_mixes_true_and_auto_stores_strings(tmp_path):
    store = ResultStore(tmp_path, "s")
    store.append_reports([_report("a", {"amp": True}), _report("b", {"amp": "auto"})])
    rows = {r["trial_id"]: r[CONFIG_PREFIX + "amp"] for r in store.reports().to_pylist()}
    assert rows == {"a": "true", "b": "auto"}


def test_compiled_runs_share_one_inductor_cache_in_the_project_cache_unless_the_user_named_one(monkeypatch, tmp_path):
    """Every trial of a node compiles into, and loads from, the same folder: a study compiles once."""
    import os
    import socket

    from trainer.cache import inductor_cache_dir

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    Trainer(TrainConfig.from_dict(tiny_overrides(iterations=1, compile=False)))
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ  # eager runs leave torch's settings alone
    Trainer(TrainConfig.from_dict(tiny_overrides(iterations=1, compile=True)))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(inductor_cache_dir())
    assert inductor_cache_dir().name == socket.gethostname()  # per host: kernels are built for its CPU
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    Trainer(TrainConfig.from_dict(tiny_overrides(iterations=1, compile=True)))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
