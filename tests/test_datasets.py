"""Real dataset layouts (VOC, Cityscapes, GTA5 -> Cityscapes) as tiny trees written here with Pillow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from study.cli import main
from trainer.config import ConfigError, TrainConfig
from trainer.data import build_data
from trainer.data.real import LABEL_ID_TO_TRAIN_ID
from trainer.data.splits import make_split

H, W = 24, 32
RUN = ["network=small", "pretrained=none", "image_size=16", "iterations=3", "eval_every=3", "batch_labeled=2",
       "batch_unlabeled=2", "resize_height=0", "ramp_up=1", "bank_lead=1", "confidence_threshold=0.0", "bank_size=8", "lr=0.01"]


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _picture(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


def _voc(root: Path, train: int = 8, val: int = 4) -> Path:
    ids = [f"2007_{i:06d}" for i in range(train + val)]
    for n, name in enumerate(ids):
        image = root / "JPEGImages" / f"{name}.jpg"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_picture(n)).save(image)
        labels = np.zeros((H, W), np.uint8)
        labels[4:12, 4:20] = n % 21
        labels[0, :] = 255  # a VOC object border
        _png(root / "SegmentationClassAug" / f"{name}.png", labels)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train_aug.txt").write_text("\n".join(ids[:train]) + "\n")
    (lists / "val.txt").write_text("\n".join(ids[train:]) + "\n")
    return root


def _cityscapes(root: Path, train: int = 6, val: int = 4) -> Path:
    for split, count in (("train", train), ("val", val)):
        for n in range(count):
            city = "aachen" if n % 2 else "bremen"
            stem = f"{city}_{n:06d}_000019"
            _png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", _picture(n))
            ids = np.full((H, W), 7, np.uint8)  # road
            ids[:8] = 23                           # sky
            ids[8:12, :4] = 26                     # car
            ids[20:] = 1                           # ego vehicle: ignored
            _png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
    return root


def _gta5(root: Path, count: int = 4) -> Path:
    for n in range(count):
        _png(root / "gta5" / "images" / f"{n:05d}.png", _picture(100 + n))
        ids = np.full((H, W), 7, np.uint8)
        ids[:6] = 21  # vegetation
        _png(root / "gta5" / "labels" / f"{n:05d}.png", ids)
    _cityscapes(root / "cityscapes")
    return root


def _run_values() -> dict:
    values = dict(item.split("=", 1) for item in RUN)
    return {k: json.loads(v) if v[0].isdigit() else v for k, v in values.items()}


def _cfg(dataset: str, root: Path, **changes) -> TrainConfig:
    return TrainConfig.from_dict({"dataset": dataset, "data_root": str(root), **_run_values(), **changes})


def test_cityscapes_label_ids_map_to_the_19_train_ids():
    assert [LABEL_ID_TO_TRAIN_ID[i] for i in (7, 8, 11, 23, 24, 26, 33)] == [0, 1, 2, 10, 11, 13, 18]
    assert {LABEL_ID_TO_TRAIN_ID[i] for i in (0, 1, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, 34, 255)} == {255}
    assert sorted(set(LABEL_ID_TO_TRAIN_ID) - {255}) == list(range(19))


def test_splits_are_reproducible_disjoint_and_sized_by_the_fraction():
    names = [f"img{i:05d}" for i in range(10582)]
    labeled, unlabeled = make_split(names[::-1], 1 / 20, seed=3)
    assert len(labeled) == 529 and len(unlabeled) == 10582 - 529
    assert not set(labeled) & set(unlabeled) and set(labeled) | set(unlabeled) == set(names)
    assert make_split(names, 1 / 20, seed=3) == (labeled, unlabeled)  # order of the input does not matter
    assert make_split(names, 1 / 20, seed=4)[0] != labeled
    assert len(make_split(names[:2975], 1 / 30, seed=0)[0]) == 99


def _stream(pool, batch: int):  # noqa: ANN001, ANN202 - a training pool and its stream
    return pool.stream(batch, generator=torch.Generator(), key="k")


def _stored(root: Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.from_numpy(np.asarray(Image.open(root / "JPEGImages" / f"{name}.jpg").convert("RGB")).copy())
    labels = torch.from_numpy(np.asarray(Image.open(root / "SegmentationClassAug" / f"{name}.png")).copy())
    return image.permute(2, 0, 1), labels


def _windows(image: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [image[..., top:top + size, left:left + size]
            for top in range(image.shape[-2] - size + 1) for left in range(image.shape[-1] - size + 1)]


def test_voc_tree_loads_with_its_classes_ignore_label_and_split_files(tmp_path):
    root = _voc(tmp_path / "voc")
    data = build_data(_cfg("voc", root, labeled_fraction=0.25))
    assert data.num_classes == 21 and data.class_names[15] == "person"
    assert len(data.labeled) == 2 and len(data.unlabeled) == 6 and len(data.val) + len(data.test) == 4
    folder = root / "splits" / "voc" / "0.25_0"
    labeled = (folder / "labeled.txt").read_text().split()
    assert len(labeled) == 2
    assert (folder / "unlabeled.txt").read_text().split() == sorted(set(
        (root / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()) - set(labeled))

    # Training batches are random crops at the stored resolution, not a resize of the image.
    images, labels = _stream(data.labeled, 6).next()
    assert images.shape == (6, 3, 16, 16) and labels.shape == (6, 16, 16)
    assert images.dtype == labels.dtype == torch.uint8
    stored = [_stored(root, name) for name in labeled]
    corners = set()
    for image, label in zip(images, labels):
        matches = [(n, k) for n, (x, y) in enumerate(stored)
                   for k, (wx, wy) in enumerate(zip(_windows(x, 16), _windows(y, 16)))
                   if torch.equal(wy, label) and (wx.int() - image.int()).abs().max() == 0]
        assert matches, "a crop that is no window of a labeled image"
        corners.add(matches[0])
    assert len(corners) > 1  # the crops move

    # Val and test: whole images, labels as stored (the VOC border row stays ignored).
    for split in (data.val, data.test):
        for images, labels in split.batches(4):
            assert images.shape[1:] == (3, H, W) and labels.shape[1:] == (H, W)
            assert (labels[:, 0] == 255).all() and set(labels[:, 4:12, 4:20].flatten().tolist()) <= set(range(21))


def test_voc_data_root_may_be_the_archive_root_above_the_voc2012_folder(tmp_path):
    tree = _voc(tmp_path / "VOCdevkit" / "VOC2012")
    for root in (tmp_path, tmp_path / "VOCdevkit", tree):
        data = build_data(_cfg("voc", root, labeled_fraction=0.25))
        assert len(data.labeled) == 2 and len(data.unlabeled) == 6 and len(data.val) + len(data.test) == 4
    # The split lists live next to the tree, whichever root names it.
    assert (tree / "splits" / "voc" / "0.25_0" / "labeled.txt").is_file()
    assert not (tmp_path / "splits").exists() and not (tmp_path / "VOCdevkit" / "splits").exists()


def test_a_voc_data_root_without_the_tree_names_the_folder_to_use(tmp_path):
    tree = _voc(tmp_path / "VOCtrainval_11-May-2012" / "VOCdevkit" / "VOC2012")
    with pytest.raises(ConfigError, match="holds no VOC 2012 tree") as err:
        build_data(_cfg("voc", tmp_path))
    assert f"data_root={tree}" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no VOC 2012 tree.*VOCdevkit/VOC2012"):
        build_data(_cfg("voc", tmp_path / "empty"))


def test_images_smaller_than_the_crop_are_padded_with_the_mean_and_ignored(tmp_path):
    from trainer.data.pools import PAD_COLOUR

    data = build_data(_cfg("voc", _voc(tmp_path / "voc"), image_size=40, labeled_fraction=0.5))
    images, labels = _stream(data.labeled, 3).next()
    assert images.shape == (3, 3, 40, 40)
    assert (labels[:, H:, :] == 255).all() and (labels[:, :, W:] == 255).all()
    assert (labels[:, 1:H, :W] != 255).all()  # the image itself, its ignored border row aside
    assert torch.equal(images[:, :, H:, :], PAD_COLOUR[None, :, None, None].expand(3, 3, 40 - H, 40))
    # Unlabeled crops: 255 marks the padding only (the VOC border row is a label, unseen here).
    _, padding = _stream(data.unlabeled, 3).next()
    assert (padding[:, :H, :W] == 0).all() and (padding[:, H:] == 255).all() and (padding[:, :, W:] == 255).all()


def test_unlabeled_images_need_no_label_maps_and_get_no_pseudo_labels_on_padding(tmp_path):
    from trainer.fit import Trainer

    root = _voc(tmp_path / "voc")
    cfg = _cfg("voc", root, image_size=40, labeled_fraction=0.25)
    names = (root / "splits" / "voc" / "0.25_0" / "unlabeled.txt")
    build_data(cfg)
    for name in names.read_text().split():
        (root / "SegmentationClassAug" / f"{name}.png").unlink()
    for workers in (0, 1):
        trainer = Trainer(cfg.replace(workers=workers))
        images, padding = trainer._on_device(*trainer.unlabeled_stream.next())
        pseudo, confidence = trainer._pseudo_labels(images, padding == 255)
        assert (pseudo[:, H:] == 255).all() and (confidence[:, :, W:] == 0).all()
        assert (pseudo[:, :H, :W] != 255).all() and (confidence[:, :H, :W] > 0).all()
        trainer.train_step()
        trainer.close()


def test_evaluation_groups_images_of_one_size_only(tmp_path):
    root = _voc(tmp_path / "voc", val=6)
    wide = np.random.default_rng(0).integers(0, 255, (H, W + 8, 3), dtype=np.uint8)
    for name in ("2007_000009", "2007_000010"):  # two val images of another size
        Image.fromarray(wide).save(root / "JPEGImages" / f"{name}.jpg")
        _png(root / "SegmentationClassAug" / f"{name}.png", np.zeros((H, W + 8), np.uint8))
    data = build_data(_cfg("voc", root, eval_batch=8))
    shapes = [(len(x), tuple(y.shape[1:])) for split in (data.val, data.test) for x, y in split.batches(8)]
    assert sum(n for n, _ in shapes) == 6 and {s for _, s in shapes} == {(H, W), (H, W + 8)}
    assert len(shapes) <= 4  # same-size neighbours share a batch
    assert [n for n, _ in ((len(x), 0) for x, _ in data.val.batches(1))] == [1] * len(data.val)


def test_resize_height_scales_images_and_scores_stored_labels(tmp_path):
    data = build_data(_cfg("cityscapes", _cityscapes(tmp_path / "cs"), resize_height=12, image_size=16))
    images, labels = _stream(data.labeled, 2).next()
    assert images.shape == (2, 3, 16, 16)
    assert (labels[:, 12:] == 255).all() and (labels[:, :12] != 255).any()  # 12 rows of image, then padding
    images, labels = next(iter(data.val.batches(1)))
    assert images.shape[1:] == (3, 12, 16) and labels.shape[1:] == (H, W)


def test_users_own_split_lists_are_used(tmp_path):
    root = _voc(tmp_path / "voc")
    mine = tmp_path / "labeled.txt"
    mine.write_text("2007_000001\n2007_000003\n2007_000005\n")
    data = build_data(_cfg("voc", root, labeled_list=str(mine)))
    assert len(data.labeled) == 3 and len(data.unlabeled) == 5
    mine.write_text("2007_000001\nnot_an_image\n")
    with pytest.raises(ConfigError, match="not_an_image"):
        build_data(_cfg("voc", root, labeled_list=str(mine)))


def test_split_lists_in_other_code_bases_formats_are_read():
    from trainer.data.splits import list_name

    assert list_name("JPEGImages/2007_000032.jpg SegmentationClass/2007_000032.png") == "2007_000032"
    assert list_name("2007_000032") == "2007_000032"
    assert list_name("leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png "
                     "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png") == "aachen/aachen_000000_000019"


def test_a_cityscapes_list_written_for_another_code_base_selects_those_images(tmp_path):
    root = _cityscapes(tmp_path / "cs")
    mine = tmp_path / "labeled.txt"
    mine.write_text("leftImg8bit/train/bremen/bremen_000000_000019_leftImg8bit.png gtFine/train/bremen/x.png\n"
                    "leftImg8bit/train/aachen/aachen_000003_000019_leftImg8bit.png gtFine/train/aachen/y.png\n")
    data = build_data(_cfg("cityscapes", root, labeled_list=str(mine)))
    assert [p[0].name for p in data.labeled.files.pairs] == ["bremen_000000_000019_leftImg8bit.png",
                                                             "aachen_000003_000019_leftImg8bit.png"]
    assert len(data.unlabeled) == 4


def test_cityscapes_tree_maps_label_ids(tmp_path):
    data = build_data(_cfg("cityscapes", _cityscapes(tmp_path / "cs"), labeled_fraction=0.5, image_size=24))
    assert data.num_classes == 19 and not data.has_background
    _, train = _stream(data.labeled, 8).next()
    val = torch.cat([y.flatten() for _, y in data.val.batches(1)])
    assert set(torch.cat([train.flatten(), val]).tolist()) == {0, 10, 13, 255}  # road, sky, car, ego vehicle


def test_gta5_and_cityscapes_alternate_and_only_the_target_fills_the_bank(tmp_path):
    data = build_data(_cfg("gta5_cityscapes", _gta5(tmp_path / "da"), labeled_fraction=0.5, image_size=24))
    stream = _stream(data.labeled, 2)
    seen = []
    for _ in range(4):
        _, labels = stream.next()
        seen.append((stream.last_is_target, bool((labels == 8).any())))  # vegetation: GTA5 only
    assert [target for target, _ in seen] == [False, True, False, True]
    assert all(vegetation != target for target, vegetation in seen)


@pytest.mark.parametrize("dataset, make", [("voc", _voc), ("cityscapes", _cityscapes), ("gta5_cityscapes", _gta5)])
def test_train_runs_on_each_layout(dataset, make, tmp_path, capsys):
    root = make(tmp_path / dataset)
    assert main(["train", "--set", f"dataset={dataset}", f"data_root={root}", *RUN, "--out", str(tmp_path / "run")]) == 0
    final = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["iteration"] == 3 and 0 <= final["test_miou"] <= 1


def _fails(argv: list[str], capsys, text: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert text in err and len(err.strip().splitlines()) == 1, err


def test_bad_files_are_named(tmp_path, capsys):
    root = _voc(tmp_path / "voc")
    args = ["train", "--set", "dataset=voc", f"data_root={root}", *RUN, "--out", str(tmp_path / "run")]

    (root / "JPEGImages" / "2007_000001.jpg").unlink()
    _fails(args, capsys, "2007_000001.jpg")
    Image.fromarray(_picture(1)).save(root / "JPEGImages" / "2007_000001.jpg")

    name = (root / "splits" / "voc" / "0.05_0" / "labeled.txt").read_text().split()[0]  # labeled: its map is read
    label = root / "SegmentationClassAug" / f"{name}.png"
    bad = np.zeros((H, W), np.uint8)
    bad[3, 3] = 40
    _png(label, bad)
    _fails(args, capsys, f"{name}.png holds class 40")

    _png(label, np.zeros((H + 1, W), np.uint8))
    _fails(args, capsys, "is 32x25 but its image")

    label.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    _fails(args, capsys, f"{name}.png is not a readable image")
    label.unlink()
    _fails(args, capsys, f"{name}.png does not exist")

    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
    _fails(args, capsys, "val.txt is empty")


def test_worker_processes_give_the_same_batches_as_memory(tmp_path):
    import multiprocessing

    root = _voc(tmp_path / "voc")
    memory = build_data(_cfg("voc", root, labeled_fraction=0.5))
    disk = build_data(_cfg("voc", root, labeled_fraction=0.5, workers=2))
    children = len(multiprocessing.active_children())
    for pool in ("labeled", "unlabeled"):
        a = _stream(getattr(memory, pool), 3)
        b = _stream(getattr(disk, pool), 3)
        for _ in range(5):
            (xa, ya), (xb, yb) = a.next(), b.next()
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert len(multiprocessing.active_children()) == children + 2  # decoded in two worker processes
        b.close()
        assert len(multiprocessing.active_children()) == children  # and close() ends them
    for (xa, ya), (xb, yb) in zip(memory.val.batches(2), disk.val.batches(2), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    (root / "SegmentationClassAug" / "2007_000010.png").unlink()  # a val image's
    with pytest.raises(ConfigError, match="2007_000010.png does not exist"):
        build_data(_cfg("voc", root, workers=2))


def test_a_corrupt_file_met_in_a_worker_is_one_line_naming_it(tmp_path):
    root = _voc(tmp_path / "voc", train=2)
    (root / "SegmentationClassAug" / "2007_000001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    stream = _stream(build_data(_cfg("voc", root, workers=1)).labeled, 2)
    with pytest.raises(ConfigError, match="2007_000001.png is not a readable image") as caught:
        for _ in range(8):
            stream.next()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_on_domain_adaptation_is_bit_exact(workers, tmp_path):
    from trainer.fit import Trainer

    cfg = _cfg("gta5_cityscapes", _gta5(tmp_path / "da"), labeled_fraction=0.5, iterations=5, workers=workers)
    straight = Trainer(cfg)
    for _ in range(5):
        straight.train_step()
    first = Trainer(cfg)
    for _ in range(3):  # an odd count: the resumed run must go on with a target batch
        first.train_step()
    first.save(tmp_path / "ckpt.pt")
    first.close()
    resumed = Trainer(cfg)
    resumed.load(tmp_path / "ckpt.pt")
    assert resumed.labeled_stream.state_dict() == first.labeled_stream.state_dict()
    for _ in range(2):
        resumed.train_step()
    for key, value in straight.student.state_dict().items():
        assert torch.equal(value, resumed.student.state_dict()[key]), key
    assert torch.equal(straight.bank.vectors, resumed.bank.vectors)
    assert resumed.labeled_stream.state_dict() == straight.labeled_stream.state_dict()
    straight.close()
    resumed.close()


def test_train_streams_with_workers(tmp_path):
    root = _cityscapes(tmp_path / "cs")
    assert main(["train", "--set", "dataset=cityscapes", f"data_root={root}", "workers=2", "resize_height=20",
                 "eval_flip=true", "bn_reestimate=2", *RUN, "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["iteration"] == 3


def test_a_study_runs_on_a_real_layout_with_loading_processes(ray_local, tmp_path):
    from study.run import run_study
    from study.spec import StudySpec
    from study.store import ResultStore

    root = _cityscapes(tmp_path / "cs")
    space = tmp_path / "space.yaml"
    space.write_text("paper_point: {lr: 0.01}\nparams:\n  lr: {type: float, low: 0.001, high: 0.1, log: true}\n")
    fixed = {**_run_values(), "dataset": "cityscapes", "data_root": str(root), "workers": 1, "eval_every": 2}
    del fixed["iterations"]  # the study's budget
    spec = StudySpec(name="cs", space=str(space), samples=2, max_iters=4, grace=2, scheduler="fifo",
                     concurrency=2, fixed=fixed, seed=0)
    run_study(spec, tmp_path / "studies", progress=False, say=lambda _: None)
    trials = ResultStore(tmp_path / "studies" / "cs", "cs").trials().to_pylist()
    assert len(trials) == 2 and {t["status"] for t in trials} == {"finished"}, trials
    reports = ResultStore(tmp_path / "studies" / "cs", "cs").reports().to_pylist()
    assert sorted(r["iteration"] for r in reports) == [2, 2, 4, 4]
    assert {r["config.dataset"] for r in reports} == {"cityscapes"} and {r["config.workers"] for r in reports} == {1}
