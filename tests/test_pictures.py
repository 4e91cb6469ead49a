"""What a run keeps for the pictures (its test confusion, its predictions on the first val images), and
the report's figures of them: stored through the real retrain path (Ray, Parquet), checked against the
dataset and against the trained model itself."""

from __future__ import annotations

import base64
import dataclasses
import io
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from PIL import Image

from study.previews import PREVIEW_IMAGES, decode
from study.records import RETRAIN, VERSION_KEY, config_columns, stored_config
from study.report import load_study, render
from study.report.pictures import coloured, confusion_figure, palette, picture_figures, prediction_grid
from study.retrain import PAPER, SUPERVISED, retrain
from study.store import ResultStore
from trainer.config import TrainConfig
from trainer.data import IGNORE_INDEX, build_data
from trainer.fit import Trainer, fit
from trainer.metrics import iou_per_class, mean_iou

ITERATIONS = 6


@pytest.fixture(scope="module")
def retrained(small_study, tmp_path_factory) -> Path:
    """A copy of the small study after `retrain --top 1 --seeds 2 --iterations 6` (its own copy: the
    report tests retrain the shared one)."""
    folder = tmp_path_factory.mktemp("pictures") / "tiny"
    shutil.copytree(small_study, folder, ignore=shutil.ignore_patterns("retrain", "ablate"))
    retrain(folder, top=1, seeds=2, iterations=ITERATIONS, progress=False, say=lambda _: None)
    return folder


@pytest.fixture(scope="module")
def rows(retrained) -> list[dict]:
    return ResultStore(retrained, "tiny").retrain().to_pylist()


# --- what a run stores ------------------------------------------------------------------------------

def test_the_stored_confusion_counts_every_scored_test_pixel_and_gives_back_the_stored_scores(rows):
    assert len(rows) == 3 * 2
    data = build_data(stored_config(rows[0]))
    scored = sum(int((labels != IGNORE_INDEX).sum()) for _, labels in data.test.batches(64))
    for row in rows:
        confusion = torch.tensor(row["test_confusion"])
        assert confusion.shape == (data.num_classes, data.num_classes)
        assert int(confusion.sum()) == scored
        assert mean_iou(confusion) == row["test_miou"]
        np.testing.assert_array_equal(iou_per_class(confusion).numpy(), np.array(row["test_iou"]))  # NaN = NaN


def test_the_stored_predictions_are_what_the_trained_model_predicts_on_the_first_val_images(rows, tmp_path):
    row = next(r for r in rows if r["rank"] == 1 and r["seed"] == 1000)
    cfg = stored_config(row)
    assert (cfg.seed, cfg.iterations) == (1000, ITERATIONS)
    # The same config and seed again, here, with a checkpoint: training on CPU is bit-exact.
    fit(cfg, out=tmp_path / "run")
    trainer = Trainer(cfg)
    trainer.load(tmp_path / "run" / "checkpoint.pt")
    net = {"teacher": trainer.teacher, "student": trainer.student}[cfg.eval_model].eval()
    images, labels = next(trainer.data.val.batches(PREVIEW_IMAGES))
    with torch.no_grad():
        logits = net(images)[0]
        if cfg.eval_flip:
            logits = logits + net(images.flip(-1))[0].flip(-1)
        expected = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
    preview = row["val_preview"]
    assert [p["index"] for p in preview] == list(range(PREVIEW_IMAGES))
    for entry, image, label, predicted in zip(preview, images, labels, expected):
        prediction = decode(entry["prediction"])
        assert prediction.dtype == np.uint8 and prediction.shape == tuple(label.shape)
        np.testing.assert_array_equal(prediction, predicted.numpy())
        np.testing.assert_array_equal(decode(entry["label"]), label.numpy())
        shown = decode(entry["image"]).astype(float)  # a JPEG: close to the image, not equal
        assert shown.shape == (*label.shape, 3) and np.abs(shown - 255 * image.permute(1, 2, 0).numpy()).mean() < 8
    # Every run of the plan predicts the same images.
    assert all([p["index"] for p in r["val_preview"]] == list(range(PREVIEW_IMAGES)) for r in rows)


def test_a_retrain_part_of_schema_version_3_reads_with_the_pictures_as_null(tmp_path):
    store = ResultStore(tmp_path, "s")
    cfg = TrainConfig()
    store.append_retrain([{"candidate": PAPER, "source": "paper", "seed": 1000, "iterations": 5,
                           "test_miou": 0.5, "test_confusion": [[3, 1], [0, 2]], **config_columns(cfg.to_dict())}])
    (part,) = (tmp_path / "retrain").glob("*.parquet")
    old = pq.read_table(part).drop_columns([c.name for c in RETRAIN.columns if c.since > 3])
    pq.write_table(old.replace_schema_metadata({**old.schema.metadata, VERSION_KEY: b"3"}),
                   part.with_name("part-0-00000003.parquet"))  # what a version-3 driver wrote
    part.unlink()
    (row,) = ResultStore(tmp_path, "s").retrain().to_pylist()
    assert row["test_miou"] == 0.5 and row["test_confusion"] is None and row["val_preview"] is None


# --- the report ---------------------------------------------------------------------------------------

def test_the_grid_shows_input_truth_and_the_three_predictions_of_one_seed_from_retrain(retrained, rows):
    data = load_study(retrained)
    fig = prediction_grid(data)
    images = [t for t in fig.data if t.type == "image"]
    assert len(images) == PREVIEW_IMAGES * 5
    assert [a.text for a in fig.layout.annotations][:2] == ["input", "ground truth"]
    winner = next(r for r in rows if r["rank"] == 1 and r["seed"] == 1000)
    assert [a.text for a in fig.layout.annotations][2:] == [f"winner {winner['candidate']}", PAPER, SUPERVISED]
    assert "retrain runs of seed 1000" in fig.layout.title.text
    assert all(t.source.startswith("data:image/") for t in images)  # embedded: nothing to fetch
    # Row 1: the stored ground truth, then each run's stored prediction, in the fixed palette.
    by = {r["candidate"]: r for r in rows if r["seed"] == 1000}
    expected = [by[winner["candidate"]]["val_preview"][0]["label"],
                *(by[c]["val_preview"][0]["prediction"] for c in (winner["candidate"], PAPER, SUPERVISED))]
    for trace, blob in zip(images[1:5], expected):
        assert trace.source == "data:image/png;base64," + base64.b64encode(coloured(decode(blob))).decode()
    shown = np.asarray(Image.open(io.BytesIO(coloured(decode(expected[0])))).convert("RGB"))
    np.testing.assert_array_equal(shown, palette()[decode(expected[0])])
    legend = {t.name: t.marker.color for t in fig.data if t.type == "scatter"}
    assert legend["background"] == "rgb(0,0,0)" and set(legend) <= {"background", *map(str, range(10))}


def test_the_confusion_is_the_winners_summed_over_seeds_and_row_normalised(retrained, rows):
    fig = confusion_figure(load_study(retrained))
    heat = fig.data[0]
    assert list(heat.x) == list(heat.y) == ["background", *map(str, range(10))]
    winner = [r for r in rows if r["rank"] == 1]
    counts = sum(np.asarray(r["test_confusion"]) for r in winner)
    assert [list(row) for row in heat.text] == counts.tolist()
    for row, total in zip(heat.z, counts.sum(axis=1)):
        if total:
            assert sum(row) == pytest.approx(100.0)
        else:
            assert all(v is None for v in row)  # a class absent from test: a gap, not zeros
    assert "seeds 1000, 1001 summed" in fig.layout.title.text


def test_the_page_embeds_the_pictures_and_without_pictures_they_are_absent(retrained):
    data = load_study(retrained)
    page = render(data)
    assert 'id="fig-pictures"' in page and 'id="fig-confusion"' in page
    assert "cdn.plot.ly" not in page.split("</script>", 1)[1] and "data:image/png;base64," in page
    none = dataclasses.replace(data, retrain=[], ablate=[])
    assert picture_figures(none) == [] and 'id="fig-pictures"' not in render(none)
    older = dataclasses.replace(data, retrain=[{**r, "val_preview": None, "test_confusion": None}
                                               for r in data.retrain])
    assert picture_figures(older) == []  # rows stored before schema 4


def test_without_retrain_the_ablation_runs_are_shown_and_named(ablated_study):
    data = load_study(ablated_study[0])
    assert not data.retrain
    fig = prediction_grid(data)
    assert [a.text for a in fig.layout.annotations][1:] == ["ground truth", f"winner {data.ablate[0]['winner']}",
                                                            "paper point"]
    assert "ablate runs of seed 1000" in fig.layout.title.text
    assert len([t for t in fig.data if t.type == "image"]) == PREVIEW_IMAGES * 4
    assert not math.isnan(sum(v for row in confusion_figure(data).data[0].z for v in row if v is not None))
