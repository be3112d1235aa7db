"""Training configuration and its named presets.

A run is fully described by a :class:`TrainConfig` (with the network's
:class:`ModelConfig`), written as JSON into the run folder, so every run can be
repeated from its ``config.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable

PAIR_SAMPLING = ("random", "all", "alphabet")
# Grey-scale or colour input.
CHANNELS = (1, 3)
# The tf.distribute strategies that ``fit --strategy`` names (``distribute.make_strategy``).
STRATEGIES = ("auto", "one", "mirrored", "multi-worker")


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The values a numeric setting may take: finite, and within the given bounds.

    ``above``/``below`` exclude the bound, ``at_least``/``at_most`` include it.
    """

    kind: type = float
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None

    def check(self, name: str, value: Any) -> None:
        """Raises ValueError, naming the setting, unless ``value`` is within bounds."""
        if self.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        checks = (
            (self.at_least, value >= (self.at_least or 0), "at least"),
            (self.above, value > (self.above or 0), "above"),
            (self.at_most, value <= (self.at_most or 0), "at most"),
            (self.below, value < (self.below or 0), "below"),
        )
        for bound, ok, words in checks:
            if bound is not None and not ok:
                raise ValueError(f"{name} must be {words} {bound:g}, got {value:g}")

    def parser(self, name: str) -> Callable[[str], int | float]:
        """An argparse ``type``: the number in the text if it is within bounds, else
        argparse's usage error naming the setting."""

        def parse(text: str) -> int | float:
            try:
                value = self.kind(text)
                self.check(name, value)
            except ValueError as error:
                message = str(error) if name in str(error) else f"{name}: not a number: {text!r}"
                raise argparse.ArgumentTypeError(message) from None
            return value

        return parse


# The range of every numeric setting, checked when a configuration is made (including from a
# config.json) and when the command line is parsed.
BOUNDS: dict[str, Bounds] = {
    "image_size": Bounds(int, at_least=8),
    "dense_units": Bounds(int, at_least=1),
    "dropout": Bounds(float, at_least=0, below=1),
    "batch_norm_momentum": Bounds(float, at_least=0, below=1),
    # Each of ModelConfig.l2's factors, and fit's --l2.
    "l2_factor": Bounds(float, at_least=0),
    "seed": Bounds(int, at_least=0),
    "train_drawers": Bounds(int, at_least=1, at_most=20),
    "batch_size": Bounds(int, at_least=2),
    "batch_alphabets": Bounds(int, at_least=1),
    "batch_characters": Bounds(int, at_least=1),
    "batch_drawers": Bounds(int, at_least=2),
    "steps_per_epoch": Bounds(int, at_least=1),
    "epochs": Bounds(int, at_least=1),
    "patience": Bounds(int, at_least=1),
    "learning_rate": Bounds(float, above=0),
    "lr_decay": Bounds(float, above=0, at_most=1),
    "momentum_ramp_epochs": Bounds(int, at_least=1),
    "ema_momentum": Bounds(float, above=0, below=1),
    "focal_gamma": Bounds(float, at_least=0),
    "within_alphabet": Bounds(float, at_least=0, at_most=1),
    "distortion_strength": Bounds(float, at_least=0),
    "val_tasks": Bounds(int, at_least=1),
    "way": Bounds(int, at_least=2),
    "val_pair_steps": Bounds(int, at_least=1),
    "max_minutes": Bounds(float, at_least=0),
    "members": Bounds(int, at_least=1),
    "shots": Bounds(int, at_least=1),
    "target_far": Bounds(float, above=0, below=1),
}


def _check_bounds(config: Any) -> None:
    """Checks each field of ``config`` that has ``BOUNDS`` (None means unset and passes)."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name in BOUNDS and value is not None:
            BOUNDS[field.name].check(field.name, value)

# Views averaged by test-time augmentation, and the symmetries they cycle through (the
# images as they are, turned, mirrored: ``augmentation.symmetry_transforms``). These are the
# most accurate settings on validation tasks (docs/ablations.md, "Test-time augmentation").
TTA_VIEWS = 16
TTA_SYMMETRIES = 8
# 1: distorted views only, 4: with the quarter turns, 8: with the quarter turns of the image
# and of its mirror image. A view turns or mirrors the whole task alike, so it stays the same
# task even where orientation means something (a query 6 turned with its candidates still
# matches the 6), which is why the symmetric views also help on MNIST digits.
TTA_SYMMETRY_CHOICES = (1, 4, 8)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of the twin CNN; the defaults are the paper's.

    Attributes:
        image_size: side of the square input.
        channels: 1 for grey-scale input (Omniglot), 3 for colour.
        filters: output channels of the four convolutions.
        kernel_sizes: kernel sides of the four convolutions.
        dense_units: size of the embedding (the sigmoid dense layer).
        padding: "valid" as in the paper (needs ``image_size >= 65``), or
            "same" for smaller inputs.
        l2: per-layer L2 factors for conv1-4, the dense layer and the head.
        dropout: the rate of dropout on the flattened features before the dense
            layer, while training (0: none, as in the paper).
        monotone_head: keep the head's weights ``alpha_j`` at or below zero
            (``model.NonPositive``), so the probability of "same" falls as any component
            distance grows. The paper leaves their sign free; a network then learns
            positive weights on components in which the images of a training pair differ
            anyway, an offset that the slowly learned bias does not give, and scores the
            identity those components carry with the wrong sign (docs/your_images.md,
            "The head's sign").
        paper_init: the paper's initialisers (N(0, 1e-2) conv weights,
            N(0.5, 1e-2) biases, N(0, 2e-1) dense weights) rather than Keras's.
        batch_norm: batch normalisation after each convolution (an addition
            to the paper, for short CPU training).
        batch_norm_momentum: the weight of the old value in each update of the moving
            mean and variance that batch normalisation uses at inference (Keras's
            default, 0.99). A moving variance starts at 1 and closes its gap to the
            features' own variance by a factor of e every ``1 / (1 - momentum)`` steps;
            until it has, inference sees badly scaled features. Where that variance is far
            below 1, as after the first convolution, this takes hundreds of steps at 0.99,
            most of a run on a small folder.
        mixed_precision: compute in bfloat16 with float32 weights; the head
            and its output stay float32.
    """

    image_size: int = 105
    channels: int = 1
    filters: tuple[int, ...] = (64, 128, 128, 256)
    kernel_sizes: tuple[int, ...] = (10, 7, 4, 4)
    dense_units: int = 4096
    padding: str = "valid"
    l2: tuple[float, ...] = (2e-4, 2e-4, 2e-4, 2e-4, 2e-4, 0.0)
    dropout: float = 0.0
    monotone_head: bool = False
    paper_init: bool = True
    batch_norm: bool = False
    batch_norm_momentum: float = 0.99
    mixed_precision: bool = False

    def __post_init__(self):
        _check_bounds(self)
        if self.channels not in CHANNELS:
            raise ValueError(f"channels must be one of {CHANNELS}, got {self.channels!r}")
        for i, n in enumerate(self.filters):
            BOUNDS["dense_units"].check(f"filters[{i}]", n)
        for i, factor in enumerate(self.l2):
            BOUNDS["l2_factor"].check(f"l2[{i}]", factor)
        if len(self.filters) != len(self.kernel_sizes):
            raise ValueError("filters and kernel_sizes must have the same length")
        if len(self.l2) != len(self.filters) + 2:
            raise ValueError(
                f"l2 needs {len(self.filters) + 2} factors (each conv, dense, head), "
                f"got {len(self.l2)}"
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; the defaults are the paper's (``koch2015``).

    Attributes:
        preset: name of the preset this configuration started from.
        seed: seeds weights, pair sampling, distortions and task sampling.
        model: the network's architecture.
        pair_sampling: "random", the paper's balanced batches of ``batch_size``
            independently drawn pairs; "all": batches of
            ``batch_alphabets x batch_characters x batch_drawers`` images
            of which every pair is a training pair (see
            ``pairs.character_batch_dataset``); "alphabet": the same batches,
            training on the pairs within each alphabet only.
        train_drawers: train on drawers 1 to this of the 30 background alphabets
            (the paper: 12; 20 is the whole background set, see ``data.paper_split``).
        batch_size: pairs per step (the paper: 128) with random pairs.
        batch_alphabets: alphabets per batch with all pairs.
        batch_characters: characters of each alphabet per batch with all pairs.
        batch_drawers: drawings of each character per batch with all pairs.
        steps_per_epoch: training batches per epoch.
        epochs: at most this many epochs (the paper: 200).
        patience: early stopping after this many epochs without a better
            one-shot validation accuracy (the paper: 20).
        optimizer: "sgd" (the paper's layer-wise SGD with momentum) or "adam".
        learning_rate: base learning rate.
        lr_decay: learning rate multiplier per epoch (the paper: 0.99).
        layer_lr_multipliers: per-layer factors on the learning rate, in
            ``model.layer_names`` order (SGD only).
        final_momenta: per-layer momentum reached after
            ``momentum_ramp_epochs``, rising linearly from 0.5 (SGD only).
        momentum_ramp_epochs: epochs over which momentum rises.
        ema_momentum: if set, validate, checkpoint and export an exponential
            moving average of the weights with this momentum per step (Polyak
            averaging, the optimiser's ``use_ema``); training itself still
            steps the raw weights.
        focal_gamma: weight each training pair's cross-entropy by ``(1 - p_t) **
            focal_gamma``, ``p_t`` the probability of the right answer (binary focal
            cross-entropy): pairs already told apart count less. 0 is the paper's loss.
        within_alphabet: probability that a different pair takes its second
            character from the first one's alphabet.
        distort: apply the paper's affine distortions to training pairs.
        distortion_strength: multiplies the ranges of those distortions
            (``augmentation.Distortion.scaled``; 1: the paper's). Test-time
            augmentation keeps the paper's ranges.
        flip: mirror each training image left to right with probability 0.5, each image
            of a pair on its own, as a part of the distortion (with ``distort``): for
            photographs whose mirror image is the same class, not for characters.
        quarter_turns: turn each training character by a random number of
            quarter turns, the drawings of one character alike (four times the
            characters to tell apart; ``augmentation.turn_or_mirror``).
        mirror: mirror each training character with probability 0.5, the
            drawings of one character alike (``augmentation.turn_or_mirror``).
        val_tasks: one-shot validation tasks each epoch (the paper: 320).
        way: candidates per one-shot task.
        val_pair_steps: batches of fixed validation pairs for ``val_loss``.
        max_minutes: end training (keeping the best model) within this many
            minutes: no epoch starts that might end past it.
        members: train this many networks, one after another with seeds
            ``seed``, ``seed + 1``, ..., each as this configuration with
            ``members=1`` (so each within ``max_minutes``), and score with the
            mean of their scores (``model.build_ensemble``).
        tta_views: views averaged by test-time augmentation, in the report and
            in the exported ``one_shot_tta`` signatures (at least 2).
        tta_symmetries: the symmetries those views cycle through, one of
            ``TTA_SYMMETRY_CHOICES``.
        images: a folder of the user's own image classes to train and evaluate on
            (``data.read_image_folder``) instead of Omniglot; None for Omniglot.
        init_from: a trained run folder or ``.keras`` file whose weights start training
            (fine-tuning) instead of a fresh initialisation; it must have the same
            architecture.
        shots: K of the K-shot tasks reported on a folder's test classes (with 1-shot); a
            class scores its nearest shot (``evaluation.class_scores``).
        target_far: with a folder, the "none of these" threshold is the one whose
            false-accept rate on validation pairs is at most this; None: the equal error
            rate's threshold.
        machine_adaptation: how the preset is adapted to the machine the run first trains
            on (``hardware.adapt_to_machine``), recorded for the run folder; empty where
            nothing is decided for the machine.
    """

    preset: str = "koch2015"
    seed: int = 0
    model: ModelConfig = ModelConfig()
    pair_sampling: str = "random"
    train_drawers: int = 12
    batch_size: int = 128
    batch_alphabets: int = 4
    batch_characters: int = 8
    batch_drawers: int = 4
    steps_per_epoch: int = 1172
    epochs: int = 200
    patience: int = 20
    optimizer: str = "sgd"
    learning_rate: float = 0.01
    lr_decay: float = 0.99
    layer_lr_multipliers: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    final_momenta: tuple[float, ...] = (0.9, 0.9, 0.9, 0.9, 0.9, 0.9)
    momentum_ramp_epochs: int = 20
    ema_momentum: float | None = None
    focal_gamma: float = 0.0
    within_alphabet: float = 0.0
    distort: bool = True
    distortion_strength: float = 1.0
    flip: bool = False
    quarter_turns: bool = False
    mirror: bool = False
    val_tasks: int = 320
    way: int = 20
    val_pair_steps: int = 8
    max_minutes: float | None = None
    members: int = 1
    tta_views: int = TTA_VIEWS
    tta_symmetries: int = TTA_SYMMETRIES
    images: str | None = None
    init_from: str | None = None
    shots: int = 5
    target_far: float | None = None
    machine_adaptation: str = ""

    def __post_init__(self):
        if self.pair_sampling not in PAIR_SAMPLING:
            raise ValueError(f"pair_sampling must be one of {PAIR_SAMPLING}, got {self.pair_sampling!r}")
        _check_bounds(self)
        check_tta(self.tta_views, self.tta_symmetries)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes``; keys of :class:`ModelConfig` go to ``model``."""
        model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
        model_changes = {k: changes.pop(k) for k in list(changes) if k in model_fields}
        model = dataclasses.replace(self.model, **model_changes)
        return dataclasses.replace(self, model=model, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        raw = json.loads(text)
        model = ModelConfig(**{k: _tuple(v) for k, v in raw.pop("model").items()})
        return cls(model=model, **{k: _tuple(v) for k, v in raw.items()})

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_json(Path(path).read_text())


def check_tta(views: int, symmetries: int) -> None:
    """Raises ValueError unless ``views`` and ``symmetries`` are a valid test-time augmentation."""
    if views < 2:
        raise ValueError(f"tta_views must be at least 2, got {views}")
    if symmetries not in TTA_SYMMETRY_CHOICES:
        raise ValueError(f"tta_symmetries must be one of {TTA_SYMMETRY_CHOICES}, got {symmetries}")


def add_tta_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *,
                      overrides: bool = False) -> None:
    """Adds ``--tta-views`` and ``--tta-symmetries`` to a command's parser.

    With ``overrides``, their defaults are None (``fit``: the configuration's value).
    """
    views, symmetries = (None, None) if overrides else (TTA_VIEWS, TTA_SYMMETRIES)
    default = "" if overrides else " (default: %(default)s)"
    parser.add_argument(
        "--tta-views", type=_tta_views, default=views, metavar="N",
        help="views averaged by test-time augmentation: the exported one_shot_tta signatures "
        "and the figures reported with it (at least 2)" + default,
    )  # fmt: skip
    parser.add_argument(
        "--tta-symmetries", type=int, choices=TTA_SYMMETRY_CHOICES, default=symmetries,
        help="the symmetries those views cycle through, turning or mirroring query and "
        "candidates alike: 1 none (distortions only), 4 the quarter turns, 8 also mirrored"
        + default,
    )  # fmt: skip


def _tta_views(text: str) -> int:
    """``--tta-views``: an int that ``check_tta`` accepts, else argparse's usage error."""
    try:
        views = int(text)
        check_tta(views, TTA_SYMMETRIES)
    except ValueError as error:  # not a number, or too few views
        raise argparse.ArgumentTypeError(str(error)) from None
    return views


def _tuple(value):
    return tuple(value) if isinstance(value, list) else value


# The paper's protocol at full size, meant for a GPU: 150,000 pairs per epoch, the paper's
# largest setting before distortion.
_KOCH2015 = TrainConfig()

# The default: the paper's architecture scaled to train in under 20 minutes on 2 CPU cores
# (32x32 input, half the filters, 'same' padding, batch normalisation, Adam), trained on every
# pair of batches of 4 alphabets x 8 characters x 4 drawers: 8,128 pairs for 128 twin passes.
# Each training character is turned by 0-3 quarter turns, four times the characters to tell
# apart, which keeps the network from overfitting the 964 training characters. The epoch is
# selected on 3,200 validation tasks rather than the paper's 320, on which the best epoch is
# often a lucky one; with a 60-epoch budget there is no early stopping. The time limit leaves
# a margin for a slow epoch. docs/ablations.md measures each of these choices ("Schedule and
# size", "Batch normalisation", "Pair sampling", "Quarter turns and mirrors", "Model selection
# on 3,200 validation tasks").
_CPU = TrainConfig(
    preset="cpu",
    model=ModelConfig(
        image_size=32,
        filters=(32, 64, 64, 128),
        kernel_sizes=(5, 5, 3, 3),
        dense_units=512,
        padding="same",
        paper_init=False,
        batch_norm=True,
        l2=(0.0,) * 6,
    ),
    pair_sampling="all",
    steps_per_epoch=300,
    epochs=60,
    patience=60,
    optimizer="adam",
    learning_rate=1e-3,
    lr_decay=0.96,  # x0.1 over the 60 epochs
    within_alphabet=0.5,
    quarter_turns=True,
    val_tasks=3200,
    val_pair_steps=4,
    max_minutes=19.5,
)

PRESETS: dict[str, TrainConfig] = {
    "koch2015": _KOCH2015,
    "cpu": _CPU,
    # An hour on 2 cores: three cpu networks (seeds seed, seed + 1, seed + 2), each within
    # the cpu preset's time limit, scored by the mean of their scores. Three networks beat
    # one trained three times as long, whose validation accuracy levels off
    # (docs/ablations.md, "Ensembles").
    "cpu-long": _CPU.replace(preset="cpu-long", members=3),
    # The cpu recipe on a tiny network for a few steps of random pairs, scored with two
    # test-time views rather than sixteen: for tests and for trying the pipeline out.
    "smoke": _CPU.replace(
        preset="smoke",
        image_size=28,
        filters=(8, 16, 16, 32),
        kernel_sizes=(5, 3, 3, 3),
        dense_units=64,
        pair_sampling="random",
        batch_size=32,
        steps_per_epoch=20,
        epochs=2,
        patience=20,
        learning_rate=3e-3,
        lr_decay=0.99,
        val_tasks=20,
        val_pair_steps=1,
        max_minutes=None,
        tta_views=2,
    ),
    # A user's own folder of classes (``--images``, ``data.read_image_folder``): three cpu
    # networks with a monotone head, each trained on every pair of batches of 16 classes x 4
    # images for 300 steps, scored by the mean of their scores. A network that sees a few
    # dozen classes learns them by heart within an epoch or two; with a free head it also
    # scores half its embedding with the wrong sign, which costs most on unseen classes.
    # Batch normalisation's moving statistics follow the features within an epoch (momentum
    # 0.9), so the first epochs are already usable and 6 epochs a network are enough; three
    # such networks tell unseen classes apart better than one trained for as many steps.
    # Quarter turns and mirrored classes make new classes out of characters, not out of
    # photographs, whose mirror image is the same class: images are mirrored on their own
    # instead (``flip``). Each pair's cross-entropy is focal (``focal_gamma`` 2): once the
    # training people are learnt, the pairs still confused weigh more than the many already
    # told apart. Test-time augmentation uses distortions only. The time limit is each
    # network's. ``fit`` fits the batches and the N of N-way tasks to the folder
    # (``reporting.fit_to_folder``). docs/your_images.md measures these choices over ten
    # splits of the ORL faces.
    "folder": _CPU.replace(
        preset="folder",
        monotone_head=True,
        batch_norm_momentum=0.9,
        members=3,
        batch_alphabets=1,
        batch_characters=16,
        batch_drawers=4,
        steps_per_epoch=50,
        epochs=6,
        patience=6,
        lr_decay=0.93,
        focal_gamma=2.0,
        quarter_turns=False,
        flip=True,
        val_tasks=1000,
        max_minutes=3.0,
        tta_symmetries=1,
    ),
}
DEFAULT_PRESET = "cpu"
# The preset of a run on a folder of images (``--images``) unless told otherwise.
FOLDER_PRESET = "folder"

# Mixed bfloat16 versions of presets, as changes to them. Where bfloat16 is fast, a cpu step
# is faster and more epochs fit in the time limit, so the recipe plans 75 epochs at x0.97 per
# epoch (docs/ablations.md, "Precision and the bfloat16 recipe"). Where bfloat16 is emulated
# it is many times slower, which is why it is not simply the preset.
_BFLOAT16_CPU = {"mixed_precision": True, "epochs": 75, "lr_decay": 0.97}
BFLOAT16_RECIPES: dict[str, dict[str, Any]] = {"cpu": _BFLOAT16_CPU, "cpu-long": _BFLOAT16_CPU}


def preset(name: str, mixed_precision: bool = False) -> TrainConfig:
    """The named preset (``koch2015``, ``cpu``, ``cpu-long`` or ``smoke``).

    With ``mixed_precision``, its mixed bfloat16 version: the recipe in
    ``BFLOAT16_RECIPES`` where the preset has one, else the preset computing
    in bfloat16.
    """
    try:
        config = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None
    if not mixed_precision:
        return config
    return config.replace(**BFLOAT16_RECIPES.get(name, {"mixed_precision": True}))
