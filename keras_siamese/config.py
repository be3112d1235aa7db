"""Training configuration and its named presets.

A run is fully described by a :class:`TrainConfig` (with the network's
:class:`ModelConfig`), written as JSON into the run folder, so every run can be
repeated from its ``config.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

PAIR_SAMPLING = ("random", "all", "alphabet")

# Views averaged by test-time augmentation, and the symmetries they cycle through (the
# images as they are, turned, mirrored: ``augmentation.symmetry_transforms``): the most
# accurate on validation tasks (``python -m keras_siamese.evaluation RUN_DIR``; README,
# "What helps"). On 3,200 validation tasks 16 views cycling through the 8 symmetries gave
# 84.2% against 79.9% for 16 views without them (a network trained with quarter turns)
# and 82.3% against 76.9% for one trained without turns; 24 and 32 views no more.
TTA_VIEWS = 16
TTA_SYMMETRIES = 8
# 1: distorted views only (the TTA before commit c8bf448), 4: with the quarter turns,
# 8: with the quarter turns of the image and of its mirror image. A view turns or mirrors
# the whole task alike, so it stays the same task even where orientation means something
# (a query 6 turned with its candidates still matches the 6): on MNIST digits 16 views gave
# 75.8% with 8 symmetries against 71.8% with 1 (the six cpu networks of the README's table).
TTA_SYMMETRY_CHOICES = (1, 4, 8)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of the twin CNN; the defaults are the paper's.

    Attributes:
        image_size: side of the square grey-scale input.
        filters: output channels of the four convolutions.
        kernel_sizes: kernel sides of the four convolutions.
        dense_units: size of the embedding (the sigmoid dense layer).
        padding: "valid" as in the paper (needs ``image_size >= 65``), or
            "same" for smaller inputs.
        l2: per-layer L2 factors for conv1-4, the dense layer and the head.
        paper_init: the paper's initialisers (N(0, 1e-2) conv weights,
            N(0.5, 1e-2) biases, N(0, 2e-1) dense weights) rather than Keras's.
        batch_norm: batch normalisation after each convolution (an addition
            to the paper, for short CPU training).
        mixed_precision: compute in bfloat16 with float32 weights; the head
            and its output stay float32.
    """

    image_size: int = 105
    filters: tuple[int, ...] = (64, 128, 128, 256)
    kernel_sizes: tuple[int, ...] = (10, 7, 4, 4)
    dense_units: int = 4096
    padding: str = "valid"
    l2: tuple[float, ...] = (2e-4, 2e-4, 2e-4, 2e-4, 2e-4, 0.0)
    paper_init: bool = True
    batch_norm: bool = False
    mixed_precision: bool = False

    def __post_init__(self):
        if len(self.filters) != len(self.kernel_sizes):
            raise ValueError("filters and kernel_sizes must have the same length")
        if len(self.l2) != len(self.filters) + 2:
            raise ValueError(
                f"l2 needs {len(self.filters) + 2} factors (each conv, dense, head), "
                f"got {len(self.l2)}"
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

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
        within_alphabet: probability that a different pair takes its second
            character from the first one's alphabet.
        distort: apply the paper's affine distortions to training pairs.
        distortion_strength: multiplies the ranges of those distortions
            (``augmentation.Distortion.scaled``; 1: the paper's). Test-time
            augmentation keeps the paper's ranges.
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
    """

    preset: str = "cpu"
    seed: int = 0
    model: ModelConfig = ModelConfig()
    pair_sampling: str = "random"
    train_drawers: int = 12
    batch_size: int = 128
    batch_alphabets: int = 4
    batch_characters: int = 8
    batch_drawers: int = 4
    steps_per_epoch: int = 100
    epochs: int = 200
    patience: int = 20
    optimizer: str = "sgd"
    learning_rate: float = 0.01
    lr_decay: float = 0.99
    layer_lr_multipliers: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    final_momenta: tuple[float, ...] = (0.9, 0.9, 0.9, 0.9, 0.9, 0.9)
    momentum_ramp_epochs: int = 20
    ema_momentum: float | None = None
    within_alphabet: float = 0.0
    distort: bool = True
    distortion_strength: float = 1.0
    quarter_turns: bool = False
    mirror: bool = False
    val_tasks: int = 320
    way: int = 20
    val_pair_steps: int = 4
    max_minutes: float | None = None
    members: int = 1
    tta_views: int = TTA_VIEWS
    tta_symmetries: int = TTA_SYMMETRIES

    def __post_init__(self):
        if self.pair_sampling not in PAIR_SAMPLING:
            raise ValueError(f"pair_sampling must be one of {PAIR_SAMPLING}, got {self.pair_sampling!r}")
        if self.ema_momentum is not None and not 0.0 < self.ema_momentum < 1.0:
            raise ValueError(f"ema_momentum must be in (0, 1) or None, got {self.ema_momentum}")
        if self.distortion_strength < 0:
            raise ValueError(f"distortion_strength must be at least 0, got {self.distortion_strength}")
        if self.members < 1:
            raise ValueError(f"members must be at least 1, got {self.members}")
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


PRESETS: dict[str, TrainConfig] = {
    # The paper's protocol at full size: meant for a GPU (about 28 training
    # pairs/s on a 2-core CPU in float32). 150,000 pairs per epoch as in the
    # paper's largest setting before distortion.
    "koch2015": TrainConfig(
        preset="koch2015",
        model=ModelConfig(),
        steps_per_epoch=1172,
        epochs=200,
        patience=20,
        optimizer="sgd",
        learning_rate=0.01,
        momentum_ramp_epochs=20,
        val_pair_steps=8,
    ),
    # The default: the paper's architecture scaled to a 2-core CPU (32x32
    # input, half the filters, 'same' padding, batch normalisation, Adam),
    # sized to train in under 20 minutes: 60 epochs of about 19 s on 2 cores of
    # an AVX-512 EPYC. On a slower CPU the time limit ends training sooner, with
    # the learning rate less decayed (on 2 AVX2 cores, about 5x slower, 10 epochs
    # with x0.8 per epoch were the measured recipe: see the README). float32 here;
    # ``preset("cpu", mixed_precision=True)`` is its bfloat16 recipe (BFLOAT16_RECIPES),
    # which fit picks where bfloat16 is fast. Trained on every pair of batches of
    # 4 alphabets x 8 characters x 4 drawers: 8,128 pairs for 128 twin passes
    # (the ablation in the README).
    "cpu": TrainConfig(
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
        batch_alphabets=4,
        batch_characters=8,
        batch_drawers=4,
        steps_per_epoch=300,
        epochs=60,
        # No early stopping within the 60 epochs: on 320 tasks validation is
        # noisy (+-2.6 points), and a lucky early epoch stopped seed 2 at epoch
        # 32 with patience 20. The best epoch (on val_tasks) is still the one kept.
        patience=60,
        optimizer="adam",
        learning_rate=1e-3,
        lr_decay=0.96,  # x0.1 over the 60 epochs
        within_alphabet=0.5,
        # Four times the characters: each turned by 0-3 quarter turns. Without them the
        # network overfits the 964 training characters (its validation loss climbs from
        # about epoch 6); with them, at seeds 0-2 on 2 Xeon cores, the best validation rose
        # from 72.2-73.0% to 76.2-76.9% and Lake's runs from 85.5-87.0% to 89.0-90.0%
        # (90.0-90.8% to 91.5-92.5% with TTA; README's ablation).
        quarter_turns=True,
        # Select the epoch on 3,200 validation tasks, not the paper's 320: they reuse
        # the same 1,108 validation images, so they cost 0.4 s more per epoch (head
        # evaluations), and the best of ~68 epochs on 320 tasks can be a lucky one:
        # bfloat16 seed 2 kept epoch 24 (83.5% on Lake's runs) where 3,200 tasks keep
        # epoch 66 (88.8%). Over seeds 0-3: 87.6% against 86.3% on Lake's runs, 91.1%
        # against 90.1% with TTA (bench/model_selection.py; the README's ablation).
        val_tasks=3200,
        max_minutes=19.5,  # training within 20 minutes, with a margin for a slow epoch
    ),
    # A few steps of a small network with the cpu preset's recipe: for tests
    # and for trying the pipeline out.
    "smoke": TrainConfig(
        preset="smoke",
        model=ModelConfig(
            image_size=28,
            filters=(8, 16, 16, 32),
            kernel_sizes=(5, 3, 3, 3),
            dense_units=64,
            padding="same",
            paper_init=False,
            batch_norm=True,
            l2=(0.0,) * 6,
        ),
        batch_size=32,
        steps_per_epoch=20,
        epochs=2,
        optimizer="adam",
        learning_rate=3e-3,
        within_alphabet=0.5,
        quarter_turns=True,
        val_tasks=20,
        val_pair_steps=1,
    ),
}
# An hour on 2 cores: three cpu networks (seeds seed, seed + 1, seed + 2), scored by
# the mean of their scores. Each trains within the cpu preset's 19.5 minutes, so
# training ends within an hour. Why not one network trained 3x longer: its
# validation accuracy levels off after about 40 epochs, and one bfloat16 network
# trained for 204 epochs (x0.99 per epoch, seed 0) scored 91.0% with TTA on Lake's
# runs, no better than its 68-epoch counterpart (92.0%), against 93.2% for three.
PRESETS["cpu-long"] = PRESETS["cpu"].replace(preset="cpu-long", members=3)
DEFAULT_PRESET = "cpu"

# Mixed bfloat16 versions of presets, as changes to them. Where bfloat16 is fast
# (AVX-512 BF16: 54 ms per cpu step against 62 in float32), the cpu presets fit
# about 69 epochs in their 19.5 minutes instead of 60, so they are planned for 75
# at x0.97 per epoch (x0.12 by epoch 69). Measured on seeds 0-2 against the float32
# recipe: see the README's ablation table. On a CPU without fast bfloat16 it is
# emulated and many times slower, which is why it is not simply the preset. These step
# times predate fused batch normalisation (model.FusedBatchNormalization: 1.57x faster
# steps in bfloat16 on a Xeon with AMX, 42 to 50 epochs there instead of 29 to 32), so on
# the EPYC the 75 epochs may now end before the time limit (not measured there).
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
