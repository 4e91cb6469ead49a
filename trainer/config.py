"""TrainConfig: every number of the method in one dataclass, with the paper's values.

The defaults are those of the paper and its official code for PASCAL VOC
(Alonso et al., ICCV 2021). A dataset preset (``preset(name)``, its values in
``trainer.presets``) changes the few values a dataset needs, the embedded ``digits``
data first of all.

A config is plain data: it round-trips through JSON, and ``validate`` checks
every field against a declared range so that a typo or a bad value is an error
that names the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

from trainer.config_files import ConfigFileError, read_document, write_document
from trainer.presets import PRESETS


class ConfigError(ValueError):
    """A config key or value is wrong; the message says which and what is allowed."""


def first_line(err: BaseException) -> str:
    """The first line of an error's text (or its type): what goes into a one-line message."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _spec(default: Any, help: str, *, low: float | None = None, high: float | None = None,
          low_open: bool = False, choices: tuple | None = None) -> Any:
    meta = {"help": help, "low": low, "high": high, "low_open": low_open, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every number of one training run.

    ``TrainConfig()`` holds the paper's PASCAL VOC values: the reference the presets and the
    search spaces' paper points are read from, not a config to run (its ``dataset`` field
    reads 'digits' all the same, and it does not validate).
    ``TrainConfig.from_dict({...})`` starts from ``preset(values["dataset"])`` (``digits``
    if absent) and validates the result; config files and ``--set`` values go through it.
    """

    # --- data and budget -------------------------------------------------------------
    dataset: str = _spec("digits", "dataset name", choices=("digits", "voc", "cityscapes", "gta5_cityscapes"))
    data_root: str = _spec("", "root folder of a real dataset (unused by digits)")
    labeled_list: str = _spec("", "a text file of the labeled training images, one name per line "
                              "(default: made from labeled_fraction and split_seed)")
    unlabeled_list: str = _spec("", "a text file of the unlabeled training images (default: the rest)")
    split_seed: int = _spec(0, "seed of the labeled/unlabeled split of a real dataset", low=0, high=2**31 - 1)
    labeled_fraction: float = _spec(1 / 20, "fraction of the training images that keep their labels",
                                    low=0.0, high=1.0, low_open=True)
    image_size: int = _spec(321, "side of the square training crop, pixels (digits: the side of a scene)",
                            low=16, high=4096)
    resize_height: int = _spec(0, "real datasets: rescale every image to this height (aspect kept) before "
                               "cropping and scoring; labels are scored at their stored size (0 = as stored)",
                               low=0, high=16384)
    batch_labeled: int = _spec(14, "labeled images per step", low=2, high=1024)
    batch_unlabeled: int = _spec(14, "unlabeled views per step (two strong views per image, so even)",
                                 low=2, high=1024)
    iterations: int = _spec(150_000, "training iterations", low=1, high=10**8)
    eval_every: int = _spec(1000, "evaluate on the val split every this many iterations", low=1, high=10**8)
    seed: int = _spec(7, "seed of every random choice of the run", low=0, high=2**31 - 1)
    device: str = _spec("auto", "'auto', 'cpu', 'cuda' or 'cuda:N'")
    threads: int = _spec(0, "torch CPU threads; 0 leaves torch's default", low=0, high=1024)
    workers: int = _spec(0, "real datasets: worker processes that decode batches from disk ahead of the "
                         "trainer (0: decode every image once into memory)", low=0, high=256)
    # Switches of the fast path (True, False or "auto": decided on the run's device, trainer/fast_path.py).
    amp: bool | str = _spec("auto", "bf16 autocast of the networks and bf16 inputs to the selectors' first-layer "
                            "products (losses, bank and batch-norm statistics stay float32); 'auto': on where the "
                            "device computes bf16 natively (GPUs with bf16 tensor cores, CPUs with AMX or "
                            "AVX-512-bf16), recorded as the run's precision")
    channels_last: bool | str = _spec("auto", "channels-last memory format for the networks; 'auto': on together "
                                      "with bf16 (where it pays), recorded as the run's channels_last")
    compile: bool = _spec(False, "torch.compile the student and teacher networks and the whole contrastive term "
                          "(fused kernels; the first steps pay the compilation, cached across a machine's runs)")

    # --- augmentation (geometry; colour jitter strengths 0.125 weak and 0.25 strong and the blur
    # probabilities are the official code's, the jitter's saturation and hue ranges the project's:
    # see official_jitter) ------------------------------------------------------------------------
    aug_scale_min: float = _spec(0.75, "smallest random zoom factor", low=0.1, high=10.0)
    aug_scale_max: float = _spec(1.75, "largest random zoom factor", low=0.1, high=10.0)
    aug_shift: float = _spec(0.0, "largest random shift, as a fraction of the image side", low=0.0, high=1.0)
    hflip: bool = _spec(True, "mirror half the images (off for digits: a mirrored digit is another shape)")

    # --- embedded digits scenes (ignored by the real datasets) --------------------------
    digits_scenes: int = _spec(2000, "training scenes (labeled and unlabeled together)", low=4, high=10**6)
    digits_eval_scenes: int = _spec(300, "scenes in each of val and test", low=2, high=10**6)
    digits_min: int = _spec(1, "fewest digits in a scene", low=1, high=16)
    digits_max: int = _spec(3, "most digits in a scene", low=1, high=16)

    # --- network ---------------------------------------------------------------------
    network: str = _spec("deeplabv2_r101", "segmentation network",
                         choices=("small", "deeplabv2_r101", "deeplabv3plus_r50"))
    pretrained: str = _spec("auto", "'auto' (the dataset's usual weights: a cached digit classifier "
                            "for digits), 'none', or a path to a torchvision-format state dict")
    pretrain_steps: int = _spec(1000, "steps of the digit-classifier pretraining (digits only)",
                                low=0, high=10**6)
    aspp_dilations: list = _spec([6, 12, 18, 24], "dilations of the ASPP branches")
    proj_dim: int = _spec(256, "width of the projection and prediction heads", low=2, high=4096)

    # --- optimisation ------------------------------------------------------------------
    lr: float = _spec(2e-4, "SGD learning rate", low=0.0, high=10.0, low_open=True)
    momentum: float = _spec(0.9, "SGD momentum", low=0.0, high=1.0)
    weight_decay: float = _spec(5e-4, "SGD weight decay", low=0.0, high=1.0)
    lr_power: float = _spec(0.9, "power of the poly learning-rate decay", low=0.0, high=10.0)

    # --- mean teacher and pseudo-labels --------------------------------------------------
    ema_momentum: float = _spec(0.995, "teacher EMA momentum at the start; it rises to 1 on a cosine",
                                low=0.0, high=1.0)
    ramp_up: int = _spec(2000, "iterations of the sigmoid ramp-up of the pseudo-label loss; "
                         "ClassMix and the contrastive loss start after it", low=0, high=10**8)
    pseudo_label_weight: float = _spec(1.0, "weight of the pseudo-label cross-entropy (0 = off)",
                                       low=0.0, high=100.0)
    pseudo_label_power: float = _spec(6.0, "pixel weight = teacher max-probability ** power",
                                      low=0.0, high=100.0)
    classmix_prob: float = _spec(0.75, "probability of ClassMix on an unlabeled view after the ramp-up",
                                 low=0.0, high=1.0)
    labeled_classmix_prob: float = _spec(0.2, "probability of ClassMix among the labeled images",
                                         low=0.0, high=1.0)
    entropy_weight: float = _spec(0.01, "weight of the entropy term on unlabeled predictions",
                                  low=0.0, high=100.0)
    class_balance: str = _spec("off", "class weights sqrt(median/frequency) on the CE terms after the "
                               "ramp-up: off, from each batch, or running over training",
                               choices=("off", "batch", "running"))
    official_class_counts: bool = _spec(False, "class_balance=running counted as in the official code: the labeled "
                                        "pixels (as loaded, before augmentation) of the first labeled epoch only, plus "
                                        "the pseudo-labels of a sliding window of the last unlabeled epoch's steps; no "
                                        "weights until both windows are full (the project counts every step's "
                                        "augmented labeled batch and pseudo-labels from step 0); no effect otherwise")
    class_balance_labeled: bool = _spec(True, "apply the class weights to the labeled CE as well")
    eval_model: str = _spec("teacher", "which network is evaluated", choices=("teacher", "student"))
    eval_flip: bool = _spec(False, "evaluate on the mean of the logits of each image and its mirror image")
    eval_batch: int = _spec(1, "images per forward pass when scoring (real datasets: of one size only); "
                            "1 as in the paper, whose images are scored whole", low=1, high=4096)
    eval_test: bool = _spec(False, "also score the test split at every evaluation (for learning-curve tables "
                            "such as benchmarks/data/; one more evaluation each time; never select on it)")
    bn_reestimate: int = _spec(0, "at the end, recompute the evaluated network's batch-norm statistics on this "
                               "many unlabeled batches (0 = off)", low=0, high=10**6)

    # --- memory bank and contrastive loss ----------------------------------------------
    bank_size: int = _spec(256, "memory vectors per class", low=1, high=10**6)
    bank_per_image: int = _spec(0, "vectors kept per labeled image and class at each update "
                                "(0 = round(bank_size / labeled images), at least 1)", low=0, high=10**6)
    bank_selection: str = _spec("per_image", "how an update picks its vectors: 'per_image' keeps the best "
                                "bank_per_image of each (image, class); 'per_batch' (the official code) ranks each "
                                "class over the whole batch and keeps the best batch_labeled x bank_per_image, "
                                "with the automatic bank_per_image times C/3 (truncated) on voc",
                                choices=("per_image", "per_batch"))
    bank_policy: str = _spec("highest", "which candidates the selector keeps",
                             choices=("highest", "lowest", "random"))
    bank_lead: int = _spec(1000, "the bank starts filling this many iterations before the ramp-up ends",
                           low=0, high=10**8)
    confidence_threshold: float = _spec(0.95, "teacher confidence a labeled pixel needs to enter the bank",
                                        low=0.0, high=1.0)
    contrastive_loss: str = _spec("paper", "'paper' (weighted 1 - cosine to same-class memory) or "
                                  "'infonce' (same-class memory against other classes')",
                                  choices=("paper", "infonce"))
    temperature: float = _spec(0.1, "InfoNCE temperature (infonce only)", low=0.0, high=100.0, low_open=True)
    infonce_memory: int = _spec(256, "newest memory vectors per class that InfoNCE compares with (its cost "
                                "grows with classes x this)", low=2, high=10**6)
    contrastive_weight_labeled: float = _spec(0.1, "weight of the contrastive loss on labeled pixels",
                                              low=0.0, high=100.0)
    contrastive_weight_unlabeled: float = _spec(0.1, "weight of the contrastive loss on unlabeled pixels",
                                                low=0.0, high=100.0)

    # --- the official code's departures from the paper, as switches -----------------------
    official_memory_weights: bool = _spec(False, "memory weights collapse to ones, as in the official code")
    official_aspp: bool = _spec(False, "ASPP sums only its first two branches, as in the official code")
    official_classmix_count: bool = _spec(False, "ClassMix takes floor(n/2)+1 classes instead of half")
    official_teacher_train_mode: bool = _spec(False, "teacher runs in train mode (batch statistics)")
    official_ema: bool = _spec(False, "teacher EMA as in the official code: momentum min(1 - 1/(10 i + 1), "
                               "the cosine momentum), over parameters only (batch-norm buffers not averaged)")
    official_class_weighted_mean: bool = _spec(False, "pseudo-label CE as in the official code: mean of CE x class "
                                               "weight x pixel weight, the class weights' scale kept (the "
                                               "project rescales them to keep the pixel weights' total)")
    official_jitter: bool = _spec(False, "colour jitter of strength s as in the official code (kornia "
                                  "ColorJitter(s, s, s/2, s/3)): saturation by up to s/2 and hue by up to s/3 of "
                                  "a turn, where the project's go up to s and s/2 of a turn")
    official_dilation: bool = _spec(False, "ResNet networks: the first block of each dilated layer takes that "
                                    "layer's dilation, as in the official DeepLab code (DeepLabv2: layer3 all 2, "
                                    "layer4 all 4), where torchvision's first block keeps the previous dilation "
                                    "(layer3 1 then 2, layer4 2 then 4); the output stride is unchanged; no effect on "
                                    "network=small")
    reload_best_after: float = _spec(0.0, "when val mIoU has not improved for more than this fraction of the "
                                     "iterations, the best evaluated network is loaded into student and teacher and "
                                     "training goes on (optimiser and learning rate as they are), as the official code "
                                     "does with 0.2; recorded as reloaded_best in metrics.jsonl (0 = never)",
                                     low=0.0, high=1.0)
    freeze_backbone_bn: bool = _spec(False, "the backbone's batch-norm scales and shifts are not trained (their "
                                     "running statistics still are), as in the official DeepLabv2")

    # --- fault injection -----------------------------------------------------------------
    # For fault-injection tests: a divergence that happens on every machine, where a large
    # learning rate blows up or not depending on the CPU's floating-point rounding.
    fault_nan_at: int = _spec(-1, "fault tests: make the loss NaN at this iteration (-1 = never)",
                              low=-1, high=10**8)

    # ------------------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        """Check every field; raise ConfigError naming the first bad one."""
        for f in fields(self):
            _check_field(f, getattr(self, f.name))
        if self.batch_unlabeled % 2:
            raise ConfigError(f"batch_unlabeled = {self.batch_unlabeled} must be even: "
                              "each unlabeled image gives two strong views")
        if self.aug_scale_min > self.aug_scale_max:
            raise ConfigError(f"aug_scale_min = {self.aug_scale_min} is above aug_scale_max = {self.aug_scale_max}")
        if self.digits_min > self.digits_max:
            raise ConfigError(f"digits_min = {self.digits_min} is above digits_max = {self.digits_max}")
        if not self.aspp_dilations or any(not isinstance(d, int) or isinstance(d, bool) or d < 1
                                          for d in self.aspp_dilations):
            raise ConfigError(f"aspp_dilations = {self.aspp_dilations!r}: expected a non-empty list "
                              "of positive integers, e.g. [6, 12, 18, 24]")
        if not _valid_device(self.device):
            raise ConfigError(f"device = {self.device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if self.pretrained == "auto" and (self.dataset != "digits" or self.network != "small"):
            raise ConfigError(f"pretrained = 'auto' means the cached digit classifier, which exists for "
                              f"dataset 'digits' with network 'small' only (here {self.dataset}, {self.network}): "
                              "give pretrained=PATH (a torchvision-format ImageNet state dict) or pretrained=none")
        if self.dataset != "digits" and not self.data_root:
            raise ConfigError(f"dataset = {self.dataset!r} needs data_root: the folder that holds it")
        return self

    # --- plain-data round trip -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, base: "TrainConfig | None" = None) -> "TrainConfig":
        """A validated config: ``values`` on top of ``base``.

        Without ``base`` the starting point is the preset of the dataset ``values["dataset"]``
        names, ``digits`` if absent; not ``TrainConfig()``, which holds the paper's VOC values.
        """
        unknown = sorted(set(values) - field_names())
        if unknown:
            raise ConfigError(_unknown_key_message(unknown[0]))
        if base is None:
            base = preset(values.get("dataset", "digits"))
        merged = {**base.to_dict(), **values}
        return cls(**{k: _coerce(k, v) for k, v in merged.items()}).validate()

    def save(self, path: str | Path) -> None:
        """Write every field to ``path``: JSON, or YAML for a .yaml or .yml name."""
        try:
            write_document(Path(path), self.to_dict())
        except ConfigFileError as err:
            raise ConfigError(f"config file {path} {err}") from None

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        """The config in a JSON, YAML (.yaml, .yml) or TOML file of TrainConfig fields; the fields
        it leaves out keep the preset of its dataset."""
        try:
            values = read_document(Path(path))
        except ConfigFileError as err:
            raise ConfigError(f"config file {path} {err}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must hold a mapping of TrainConfig fields, "
                              f"not {type(values).__name__}")
        try:
            return cls.from_dict(values)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None

    def replace(self, **changes: Any) -> "TrainConfig":
        return TrainConfig.from_dict(changes, base=self)


def preset(name: str) -> TrainConfig:
    """The paper's config with dataset ``name``'s changes applied (not validated: data_root
    and the pretrained weights of a real dataset are the user's to give)."""
    if name not in PRESETS:
        raise ConfigError(f"dataset = {name!r} has no preset: choose one of {', '.join(PRESETS)}")
    return TrainConfig(**{**TrainConfig().to_dict(), **PRESETS[name]})


def field_names() -> set[str]:
    return {f.name for f in fields(TrainConfig)}


def field_help() -> dict[str, str]:
    return {f.name: f.metadata["help"] for f in fields(TrainConfig)}


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` from the command line; the value is JSON when it parses, else a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set lr=0.01")
    if key not in field_names():
        raise ConfigError(_unknown_key_message(key))
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, _coerce(key, value)


# --- validation helpers -------------------------------------------------------------------

def did_you_mean(word: str, options: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest option, or "" when none is close."""
    close = difflib.get_close_matches(word, sorted(options), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _unknown_key_message(key: str) -> str:
    hint = did_you_mean(key, field_names()) or "; see `semiseg-study train --help-config`"
    return f"unknown TrainConfig key {key!r}{hint}"


_TYPES = {f.name: f.type for f in fields(TrainConfig)}
SWITCH = "bool | str"  # the annotation of a switch: True, False or "auto"


def _coerce(key: str, value: Any) -> Any:
    """Accept an int where a float is expected, and 'true'/'false' strings for booleans."""
    kind = _TYPES[key]
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in ("bool", SWITCH) and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if kind == "list" and isinstance(value, tuple):
        return list(value)
    return value


def _check_field(f: dataclasses.Field, value: Any) -> None:
    kind, meta = f.type, f.metadata
    if kind == SWITCH:
        if not isinstance(value, bool) and value != "auto":
            raise ConfigError(f"{f.name} = {value!r}: expected true, false or 'auto' ({meta['help']})")
        return
    python_type = {"int": int, "float": float, "bool": bool, "str": str, "list": list}[kind]
    if not isinstance(value, python_type) or (kind in ("int", "float") and isinstance(value, bool)):
        raise ConfigError(f"{f.name} = {value!r} has type {type(value).__name__}, expected {kind} "
                          f"({meta['help']})")
    if kind == "float" and not math.isfinite(value):
        raise ConfigError(f"{f.name} = {value!r} must be a finite number ({meta['help']})")
    if meta["choices"] is not None and value not in meta["choices"]:
        allowed = ", ".join(repr(c) for c in meta["choices"])
        raise ConfigError(f"{f.name} = {value!r} is not allowed: choose one of {allowed}")
    low, high = meta["low"], meta["high"]
    if low is not None and (value < low or (meta["low_open"] and value == low)):
        bound = f"> {low}" if meta["low_open"] else f">= {low}"
        raise ConfigError(f"{f.name} = {value!r} is out of range: must be {bound} and <= {high} "
                          f"({meta['help']})")
    if high is not None and value > high:
        raise ConfigError(f"{f.name} = {value!r} is out of range: must be <= {high} ({meta['help']})")


def _valid_device(device: str) -> bool:
    if device in ("auto", "cpu", "cuda"):
        return True
    head, _, index = device.partition(":")
    return head == "cuda" and index.isdigit()
