"""Training with ``model.fit``: the paper's optimiser, callbacks and run folder.

A run folder holds everything a run produced::

    config.json          the resolved TrainConfig
    log.csv              per-epoch metrics (appended across resumes)
    tensorboard/         TensorBoard logs
    backup/              BackupAndRestore state while training (a killed run resumes)
    member1-seed0/ ...   with ``members > 1``: a run folder per network (train_members),
                         and the folder holds the ensemble's best.keras and members.json
    best.keras           the model with the best one-shot validation accuracy
    learning_curves.png  loss and one-shot accuracy per epoch (written by keras_siamese.fit)
    one_shot_tasks.png   a few of Lake's trials as the model scored them (keras_siamese.fit)
    metrics.json         the evaluation (keras_siamese.fit)
    split.json           with a folder of images: its classes in train, validation and test
    roc.png              with a folder of images: verification ROC on its test classes
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_siamese import files
from keras_siamese.augmentation import Distortion
from keras_siamese.config import TrainConfig
from keras_siamese.data import OmniglotImages
from keras_siamese.distribute import Distribution, StopTogether, shard_by_data
from keras_siamese.evaluation import (
    OneShotTasks, SiameseScorer, accuracy, class_tasks, within_alphabet_tasks,
)
from keras_siamese.model import (
    build_all_pairs_trainer, build_siamese, head_of, layer_names, load_trained,
    siamese_members, twin_of,
)
from keras_siamese.optimizers import LayerwiseSGD
from keras_siamese.pairs import character_batch_dataset, pair_dataset

VAL_METRIC = "val_one_shot_accuracy"


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    """The optimiser of ``config``, its learning rate decaying once per epoch."""
    schedule = keras.optimizers.schedules.ExponentialDecay(
        config.learning_rate,
        decay_steps=config.steps_per_epoch,
        decay_rate=config.lr_decay,
        staircase=True,
    )
    # Weight averaging (Polyak): see SwapEMAWeights in train().
    ema = dict(use_ema=config.ema_momentum is not None, ema_momentum=config.ema_momentum or 0.99)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(schedule, **ema)
    if config.optimizer != "sgd":
        raise ValueError(f"unknown optimizer {config.optimizer!r}; use 'sgd' or 'adam'")
    names = layer_names(config.model)
    return LayerwiseSGD(
        schedule,
        layer_multipliers=dict(zip(names, config.layer_lr_multipliers)),
        layer_momenta=dict(zip(names, config.final_momenta)),
        momentum_ramp_steps=config.momentum_ramp_epochs * config.steps_per_epoch,
        **ema,
    )


def _pair_masks(y_true, y_pred):
    """``(same, different)`` float masks shaped like the ``(G, n, n)`` pair scores, diagonals excluded."""
    groups, n = ops.shape(y_pred)[0], ops.shape(y_pred)[-1]
    labels = ops.reshape(y_true, (groups, n))
    same = ops.cast(ops.equal(labels[:, :, None], labels[:, None, :]), "float32")
    off_diagonal = 1.0 - ops.eye(n, dtype="float32")
    return same * off_diagonal, 1.0 - same


def _balanced_mean(values, same, different):
    """Mean over same pairs and mean over different pairs, weighted half each."""
    return 0.5 * ops.sum(values * same) / ops.maximum(ops.sum(same), 1.0) + 0.5 * ops.sum(
        values * different
    ) / ops.maximum(ops.sum(different), 1.0)


@keras.saving.register_keras_serializable(package="keras_siamese")
class AllPairsCrossEntropy(keras.losses.Loss):
    """Binary cross-entropy over every pair of a batch, same and different weighted half each.

    ``y_true`` is the character of each of the ``B`` images, ``y_pred`` the
    ``(G, n, n)`` probabilities of ``model.build_all_pairs_trainer`` (pairs
    within each of ``G`` groups of ``n = B / G`` images). An image is never
    paired with itself. Weighting the two kinds of pair equally keeps the
    paper's balanced batches although most pairs of a batch are different.

    With ``focal_gamma > 0`` each pair's cross-entropy is weighted by
    ``(1 - p_t) ** focal_gamma`` (Keras's binary focal cross-entropy, Lin et al. 2017), where
    ``p_t`` is the probability given to the right answer: the pairs already told apart
    count less, the pairs still confused count more.
    """

    def __init__(
        self, focal_gamma: float = 0.0, name: str = "all_pairs_cross_entropy", **kwargs
    ):
        super().__init__(name=name, **kwargs)
        self.focal_gamma = focal_gamma

    def get_config(self) -> dict:
        return {**super().get_config(), "focal_gamma": self.focal_gamma}

    def call(self, y_true, y_pred):
        same, different = _pair_masks(y_true, y_pred)
        if self.focal_gamma:
            bce = keras.losses.binary_focal_crossentropy(
                same[..., None], y_pred[..., None], gamma=self.focal_gamma
            )
        else:
            bce = ops.binary_crossentropy(same, y_pred)
        # Shaped (1,), not a scalar: Keras reduces it as a batch of losses, which divides it
        # by the replicas of a tf.distribute strategy (whose gradients are summed); a scalar
        # loss it passes on unscaled, which would multiply the gradient by the replicas.
        return ops.reshape(_balanced_mean(bce, same, different), (1,))


def all_pairs_accuracy(y_true, y_pred):
    """Balanced verification accuracy (``p > 0.5``) over the pairs that ``AllPairsCrossEntropy`` sees."""
    same, different = _pair_masks(y_true, y_pred)
    correct = ops.cast(ops.equal(ops.cast(y_pred > 0.5, "float32"), same), "float32")
    return _balanced_mean(correct, same, different)


class OneShotValidation(keras.callbacks.Callback):
    """Adds the N-way one-shot accuracy on fixed tasks to each epoch's logs.

    It must come before the callbacks that read the metric (early stopping,
    checkpointing, CSV logging).

    Args:
        tasks: the validation tasks.
        model: the Siamese model to score; by default the model being fitted.
    """

    def __init__(self, tasks, metric: str = VAL_METRIC, model: keras.Model | None = None):
        super().__init__()
        self.tasks = tasks
        self.metric = metric
        self.siamese = model

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            scorer = SiameseScorer(self.siamese or self.model)
            logs[self.metric] = accuracy(scorer(self.tasks), self.tasks)


class SiameseCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` that saves a given model rather than the one being fitted, atomically.

    With all-pairs training ``fit`` runs on a training view that shares its
    weights with the Siamese model; the checkpoint must still be the Siamese model.
    Each save goes to a temporary file that is then renamed over ``filepath``
    (``files.replace_atomically``), so a kill or a full disk mid-save leaves the
    previous best model whole.
    """

    def __init__(self, siamese: keras.Model, filepath, **kwargs):
        self.final_path = Path(filepath)
        files.remove_stale_partials(self.final_path)
        super().__init__(files.partial_path(self.final_path), **kwargs)
        self.siamese = siamese

    def set_model(self, model):
        super().set_model(self.siamese)

    def on_epoch_end(self, epoch, logs=None):
        partial = Path(self.filepath)
        super().on_epoch_end(epoch, logs)
        if partial.exists():
            files.publish(partial, self.final_path)


class EpochBackup(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose backups are whole and whose epochs are backed up last.

    Each backup (weights and the epoch count) is written into a folder of its own and
    published by atomically pointing the symlink ``latest`` at it; ``previous`` keeps
    the backup before it, which is read instead if the latest cannot be (Keras's
    ``double_checkpoint``). A kill at any moment leaves a consistent backup: weights
    and epoch count always come from the same epoch.

    The backup of an epoch is written by :meth:`commit`, which ``train`` calls from a
    callback placed after every other one, so an epoch counts as done only once it has
    been validated, checkpointed and logged: a run killed before that repeats the epoch.

    Under a multi-worker strategy only the chief writes (``writes=True``); every worker
    restores from the chief's backup, so all of them start from the same epoch.
    """

    def __init__(self, backup_dir: str | Path, writes: bool = True):
        super().__init__(
            str(backup_dir), save_freq="epoch", double_checkpoint=True, delete_checkpoint=writes
        )
        self.writes = writes
        latest, previous = Path(backup_dir) / "latest", Path(backup_dir) / "previous"
        self._weights_path = str(latest / "latest.weights.h5")
        self._training_metadata_path = str(latest / "training_metadata.json")
        self._prev_weights_path = str(previous / "latest.weights.h5")
        self._prev_training_metadata_path = str(previous / "training_metadata.json")

    def on_train_begin(self, logs=None):
        # Keras falls back to the previous backup by copying it over the latest; here the
        # previous one is read where it is, which writes nothing.
        try:
            self._load_model()
        except OSError:
            if not Path(self._prev_weights_path).exists():
                raise
            latest = self._weights_path, self._training_metadata_path
            self._weights_path = self._prev_weights_path
            self._training_metadata_path = self._prev_training_metadata_path
            try:
                self._load_model()
            finally:
                self._weights_path, self._training_metadata_path = latest

    @staticmethod
    def epochs_done(backup_dir: str | Path) -> int:
        """The epochs that the latest backup in ``backup_dir`` holds (0 without one)."""
        for name in ("latest", "previous"):
            try:
                text = (Path(backup_dir) / name / "training_metadata.json").read_text()
                return int(json.loads(text)["epoch"])
            except (OSError, ValueError, KeyError):
                continue
        return 0

    def on_epoch_end(self, epoch, logs=None):
        pass  # the epoch is backed up by commit(), after the other callbacks

    def commit(self, epoch: int) -> None:
        """Backs up the model as it ends ``epoch`` (counted from 0), if this worker writes."""
        self._current_epoch = epoch + 1
        if self.writes:
            self._save_model()

    def _save_model(self):
        backup = Path(self.backup_dir)
        backup.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{self._current_epoch:05d}"
        partial = backup / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        self.model.save_weights(partial / "latest.weights.h5")
        metadata = {"epoch": self._current_epoch, "batch": 0}
        (partial / "training_metadata.json").write_text(json.dumps(metadata))
        files.sync_tree(partial)
        shutil.rmtree(backup / name, ignore_errors=True)
        os.replace(partial, backup / name)
        latest = backup / "latest"
        if latest.is_symlink():
            files.point_symlink(backup / "previous", os.readlink(latest))
        files.point_symlink(latest, name)
        keep = {os.readlink(backup / link) for link in ("latest", "previous") if (backup / link).is_symlink()}
        for folder in backup.glob("epoch-*"):
            if folder.name not in keep:
                shutil.rmtree(folder, ignore_errors=True)


class _CommitBackup(keras.callbacks.Callback):
    """Backs up each epoch after every other callback has seen it (see ``EpochBackup``).

    With weight averaging the model holds the averaged weights from each epoch's end to
    the next one's start; the backup must hold the raw weights that training continues
    from, so they are swapped back first, as the next epoch's start would.
    """

    def __init__(self, backup: EpochBackup, swap: keras.callbacks.SwapEMAWeights | None):
        super().__init__()
        self.backup = backup
        self.swap = swap

    def on_epoch_end(self, epoch, logs=None):
        if self.swap is not None:
            self.swap.on_epoch_begin(epoch + 1)
        self.backup.commit(epoch)


class ResumedEarlyStopping(keras.callbacks.EarlyStopping):
    """``EarlyStopping`` that carries on from the epochs a resumed run already logged.

    Keras's callback starts counting afresh at each ``fit``, so a run preempted more
    often than its patience would never stop early; this one reads the best value so
    far and the epochs since it from the run's ``log.csv``.
    """

    def __init__(self, log_path: str | Path, **kwargs):
        super().__init__(**kwargs)
        self.log_path = Path(log_path)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        values = read_history(self.log_path).get(self.monitor, []) if self.log_path.exists() else []
        if values:
            pick = max if self.mode == "max" else min
            best = values.index(pick(values))
            self.best, self.best_epoch, self.wait = values[best], best, len(values) - 1 - best


class ContinueStream(keras.callbacks.Callback):
    """Starts the training stream at the step that training starts from.

    ``fit`` reads the endless training stream through one iterator, created after
    ``on_train_begin``; by then ``BackupAndRestore`` (earlier in the list) has
    restored the optimiser's step count, so a resumed run draws the batches the
    killed one would have drawn next rather than the first epoch's again.
    """

    def __init__(self, first_step: tf.Variable):
        super().__init__()
        self.first_step = first_step

    def on_train_begin(self, logs=None):
        self.first_step.assign(ops.convert_to_numpy(self.model.optimizer.iterations))


class TimeLimit(keras.callbacks.Callback):
    """Stops training when another epoch might not end within ``minutes``.

    The next epoch is assumed to take as long as the longest one so far (later
    epochs can be slower on a busy machine), so training ends within the budget
    rather than at the first epoch past it. The budget counts from the start of
    this process's training: a resumed run gets a fresh one.
    """

    def __init__(self, minutes: float):
        super().__init__()
        self.seconds = minutes * 60.0

    def on_train_begin(self, logs=None):
        self.start = self.epoch_start = time.monotonic()
        self.longest = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        now = time.monotonic()
        self.longest = max(self.longest, now - self.epoch_start)
        if now - self.start + self.longest > self.seconds:
            print(
                f"\nStopping after epoch {epoch + 1}: another would end past the "
                f"{self.seconds / 60:.1f}-minute limit."
            )
            self.model.stop_training = True


def _keep_logged_epochs(log_path: Path, epochs: int) -> None:
    """Keeps the rows of the first ``epochs`` epochs in ``log.csv`` (and its header)."""
    if not log_path.exists():
        return
    with log_path.open(newline="") as f:
        lines = f.read().splitlines(keepends=True)
    header, rows = lines[:1], lines[1:]
    kept = [row for row in rows if row.split(",", 1)[0].strip().isdecimal()
            and int(row.split(",", 1)[0]) < epochs]
    if kept != rows:
        files.write_text_atomically(log_path, "".join(header + kept))


def _best_so_far(log_path: Path) -> float | None:
    """Best validation accuracy recorded in an earlier part of a resumed run."""
    if not log_path.exists():
        return None
    with log_path.open() as f:
        values = [float(row[VAL_METRIC]) for row in csv.DictReader(f) if row.get(VAL_METRIC)]
    return max(values) if values else None


def progress_verbosity() -> int:
    """``model.fit``'s verbosity for this process: a progress bar (1) where standard output
    is a terminal; one line per epoch (2) where it is a log file, a pipe or CI, in which a
    progress bar writes a line for every step."""
    return 1 if sys.stdout.isatty() else 2


def train(
    config: TrainConfig,
    splits: dict[str, OmniglotImages],
    run_dir: str | Path,
    verbose: int | str | None = None,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
    distribution: Distribution | None = None,
) -> tuple[keras.Model, dict[str, list[Any]]]:
    """Trains a Siamese network with ``model.fit`` and returns the best model.

    Args:
        config: the run's configuration.
        splits: ``"train"`` and ``"validation"`` images (see ``data.paper_split``).
        run_dir: the run folder; if it holds a backup of a killed run with the
            same configuration, training resumes from its last epoch, and if it
            holds a finished run, that run's best model is returned untrained.
        verbose: ``model.fit``'s verbosity; by default (None, ``progress_verbosity``) a
            progress bar in a terminal and one line per epoch elsewhere.
        extra_callbacks: more callbacks for ``model.fit``, after the run's own, so
            that their logs hold the one-shot validation accuracy. They see the
            compiled model that ``fit`` trains (``compiled_models``).
        distribution: the ``tf.distribute`` strategy to train under
            (``distribute.make_strategy``; by default none, one device). Under a multi-worker strategy every worker
            calls ``train`` alike; only the chief writes to ``run_dir``, and the
            others return the model as trained and no history.

    Returns:
        The model with the best one-shot validation accuracy, and the
        per-epoch history (from ``log.csv``, so it spans resumes).
    """
    if config.members != 1:
        raise ValueError(f"train() trains one network; use train_members() for {config.members}")
    distribution = distribution or Distribution()
    chief = distribution.chief
    run_dir = _claim_run_dir(config, run_dir) if chief else Path(run_dir)
    best_path = run_dir / "best.keras"
    log_path = run_dir / "log.csv"
    backup_dir = run_dir / "backup"
    if best_path.exists() and _best_so_far(log_path) is not None and not backup_dir.exists():
        # BackupAndRestore deletes its backup when training ends, so this run's training has
        # finished: resuming a run killed later (in evaluation or export) must not retrain it.
        return files.load_keras_model(best_path), read_history(log_path)
    if chief:
        # Epochs logged after the last backup are repeated when the run resumes: drop them.
        _keep_logged_epochs(log_path, EpochBackup.epochs_done(backup_dir))
    best_so_far = _best_so_far(log_path)

    keras.utils.set_random_seed(config.seed)
    first_step = tf.Variable(0, dtype=tf.int64, trainable=False)
    train_ds, val_ds = datasets(config, splits, first_step)
    if distribution.multi_worker:
        train_ds, val_ds = shard_by_data(train_ds), shard_by_data(val_ds)
    val_tasks = validation_tasks(
        splits["validation"], tasks=config.val_tasks, way=config.way, seed=config.seed,
        folder=config.images is not None,
    )  # fmt: skip

    with distribution.scope():
        model, fitted = compiled_models(config, replicas=distribution.replicas)
    # First: it restores a killed run before the others start.
    backup = EpochBackup(backup_dir, writes=chief)
    callbacks: list[keras.callbacks.Callback] = [backup, ContinueStream(first_step)]
    swap = None
    if config.ema_momentum is not None:
        # From each epoch's end to the next one's start the model holds the averaged
        # weights: validation, the checkpoint (hence evaluation and export) see them.
        swap = keras.callbacks.SwapEMAWeights(swap_on_epoch=True)
        callbacks.append(swap)
    callbacks += [OneShotValidation(val_tasks, model=model), keras.callbacks.TerminateOnNaN()]
    if chief:
        callbacks.append(
            SiameseCheckpoint(
                model,
                best_path,
                monitor=VAL_METRIC,
                mode="max",
                save_best_only=True,
                initial_value_threshold=best_so_far,
            )
        )
    callbacks.append(
        ResumedEarlyStopping(log_path, monitor=VAL_METRIC, mode="max", patience=config.patience)
    )
    if chief:
        callbacks += [
            keras.callbacks.CSVLogger(log_path, append=True),
            keras.callbacks.TensorBoard(run_dir / "tensorboard", write_graph=False),
        ]
    if config.max_minutes:
        callbacks.append(TimeLimit(config.max_minutes))
    callbacks += extra_callbacks
    if distribution.multi_worker:
        callbacks.append(StopTogether(distribution.strategy))
    callbacks.append(_CommitBackup(backup, swap))  # last: see EpochBackup
    fitted.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.epochs,
        # One endless stream, one iterator: a new iterator each epoch stalls the start of
        # some epochs, most likely while the deleted one waits for tf.data's tuning thread
        # (pairs._seeded_batches; docs/ablations.md, "Untuned tf.data streams").
        steps_per_epoch=config.steps_per_epoch,
        callbacks=callbacks,
        shuffle=False,  # pairs are drawn at random already
        verbose=progress_verbosity() if verbose is None else verbose,
    )
    if not chief:
        return model, {}
    if best_path.exists():
        model = files.load_keras_model(best_path)
    return model, read_history(log_path)


def train_members(
    config: TrainConfig,
    splits: dict[str, OmniglotImages],
    run_dir: str | Path,
    verbose: int | str | None = None,
    distribution: Distribution | None = None,
) -> list[tuple[Path, keras.Model, dict[str, list[Any]]]]:
    """Trains the ``config.members`` networks of an ensemble, one after another.

    Member ``i`` (from 1) is ``config`` with ``members=1`` and seed
    ``config.seed + i - 1``, trained by :func:`train` in its own run folder
    ``run_dir/member{i}-seed{seed}``: it is the run that ``fit --seed`` with the
    same settings trains, a killed ensemble run resumes its unfinished member,
    and finished members are loaded, not trained again.

    Returns:
        Each member's run folder, best model and per-epoch history.
    """
    distribution = distribution or Distribution()
    run_dir = _claim_run_dir(config, run_dir) if distribution.chief else Path(run_dir)
    trained = []
    for i in range(config.members):
        member = config.replace(members=1, seed=config.seed + i)
        member_dir = run_dir / f"member{i + 1}-seed{member.seed}"
        print(f"Member {i + 1} of {config.members}: seed {member.seed}, run folder {member_dir}")
        trained.append(
            (member_dir, *train(member, splits, member_dir, verbose, distribution=distribution))
        )
    return trained


def _claim_run_dir(config: TrainConfig, run_dir: str | Path) -> Path:
    """Creates ``run_dir`` and writes ``config`` there, refusing a folder of another run."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.json"
    if config_path.exists() and TrainConfig.load(config_path) != config:
        raise ValueError(f"{run_dir} holds a run with a different configuration ({config_path})")
    files.write_text_atomically(config_path, config.to_json())
    return run_dir


def validation_tasks(
    validation: OmniglotImages, *, tasks: int, way: int, seed: int, folder: bool = False
) -> OneShotTasks:
    """The one-shot tasks that models are chosen on: ``tasks`` ``way``-way tasks drawn with
    ``seed + 2``. Omniglot's are Koch et al.'s within-alphabet tasks; a folder's take one
    image of each class as its candidates (``evaluation.class_tasks``)."""
    if folder:
        return class_tasks(validation, tasks, way=way, seed=seed + 2)
    return within_alphabet_tasks(validation, tasks, way=way, seed=seed + 2)


class IncompatibleNetworkError(ValueError):
    """A trained network that cannot start this run: another architecture or input."""


def initial_weights(model: keras.Model, source: str | Path) -> None:
    """Sets ``model``'s weights to those of a trained network (``--init-from``): fine-tuning.

    A monotone head (``ModelConfig.monotone_head``) keeps its fresh weights when the trained
    head has positive weights (it was trained without the constraint): its bias and negative
    weights were learned beside the positive ones, and clipping those away would leave a head
    far off from the one the twin's features need, with a bias that the optimiser moves back
    only slowly. The twin's weights, what a trained network transfers, are taken either way.
    From an ensemble (the run folder of a ``folder`` preset run, say) the start is its first
    network; each network of a new ensemble starts from it with its own seed.

    Raises:
        IncompatibleNetworkError: the trained network has another architecture or input.
        FileNotFoundError: ``source`` holds no network.
    """
    trained = siamese_members(load_trained(source))[0]
    ours = [tuple(w.shape) for w in model.weights]
    theirs = [tuple(w.shape) for w in trained.weights]
    if ours != theirs or model.input["left"].shape != trained.input["left"].shape:
        raise IncompatibleNetworkError(
            f"--init-from {source}: that network takes {tuple(trained.input['left'].shape[1:])} "
            f"images with {len(theirs)} weight tensors; this run's takes "
            f"{tuple(model.input['left'].shape[1:])} with {len(ours)}. Start it with the same "
            "architecture (--preset, --image-size, --channels, --filters, --dense-units)."
        )
    if head_of(model).alpha_constraint is not None and np.max(head_of(trained).alpha.numpy()) > 0:
        twin_of(model).set_weights(twin_of(trained).get_weights())
    else:
        model.set_weights(trained.get_weights())


def replica_groups(config: TrainConfig, replicas: int) -> int:
    """The all-pairs groups of each replica's share of a batch of ``config``.

    Each of ``replicas`` replicas pairs the images of its ``1/replicas`` of the batch: with
    ``pair_sampling="alphabet"`` its share of the alphabets, each alphabet one group; with
    ``"all"`` its share of the characters, one group.

    Raises:
        ValueError: the batch does not split into whole alphabets (or characters) per replica.
    """
    alphabets, characters = config.batch_alphabets, config.batch_characters
    if config.pair_sampling == "alphabet":
        if alphabets % replicas:
            raise ValueError(
                f"{replicas} replicas cannot share batches of {alphabets} alphabets: "
                "choose --batch-alphabets, or the replicas, so that each gets whole alphabets"
            )
        return alphabets // replicas
    if (alphabets * characters) % replicas:
        raise ValueError(
            f"{replicas} replicas cannot share batches of {alphabets * characters} characters: "
            "each replica pairs whole characters"
        )
    return 1


def compiled_models(config: TrainConfig, replicas: int = 1) -> tuple[keras.Model, keras.Model]:
    """A new Siamese model, and the compiled model that ``fit`` trains for it.

    With ``config.init_from`` the new model starts from that trained network's weights.

    With random pairs that is the Siamese model itself, with its binary
    cross-entropy (focal with ``config.focal_gamma``); with all pairs it is its all-pairs view
    (``model.build_all_pairs_trainer``) with :class:`AllPairsCrossEntropy`.
    Both report the verification accuracy of their pairs as ``accuracy``.

    With ``replicas > 1`` (created in a ``tf.distribute`` strategy's scope), batch
    normalisation is synchronised over the replicas, and each replica pairs the images of
    its share of a batch (:func:`replica_groups`).
    """
    model = build_siamese(config.model, synchronized_batch_norm=replicas > 1)
    if config.init_from is not None:
        initial_weights(model, config.init_from)
    if config.pair_sampling != "random":
        fitted = build_all_pairs_trainer(model, replica_groups(config, replicas))
        loss = AllPairsCrossEntropy(config.focal_gamma)
        pair_accuracy = keras.metrics.MeanMetricWrapper(all_pairs_accuracy, name="accuracy")
    else:
        fitted = model
        if config.focal_gamma:
            loss = keras.losses.BinaryFocalCrossentropy(gamma=config.focal_gamma)
        else:
            loss = keras.losses.BinaryCrossentropy()
        pair_accuracy = keras.metrics.BinaryAccuracy(name="accuracy")
    fitted.compile(optimizer=make_optimizer(config), loss=loss, metrics=[pair_accuracy])
    return model, fitted


def batch_shape_within(split: OmniglotImages, shape: dict[str, int]) -> dict[str, int]:
    """An all-pairs batch ``shape`` cut down to what ``split`` holds: its largest group's
    classes, the groups that have that many, and its smallest class's images. (Omniglot's
    validation split holds the training batch's shape; a small folder's may not.)"""
    sizes = np.unique(split.character, return_counts=True)[1]
    groups = np.unique([a for a, _ in set(zip(split.alphabet, split.character))], return_counts=True)[1]
    characters = min(shape["characters"], int(groups.max()))
    return dict(
        alphabets=min(shape["alphabets"], int(np.sum(groups >= characters))),
        characters=characters,
        drawers=min(shape["drawers"], int(sizes.min())),
    )


def datasets(
    config: TrainConfig, splits: dict[str, OmniglotImages], first_step: tf.Variable | int = 0
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """The endless training stream from batch ``first_step``, and fixed, cached validation batches.

    ``fit`` takes ``config.steps_per_epoch`` training batches per epoch.
    """
    size = config.model.image_size
    distortion = (
        Distortion(flip=0.5 if config.flip else 0.0).scaled(config.distortion_strength)
        if config.distort else None
    )  # fmt: skip
    if config.pair_sampling != "random":
        shape = dict(
            alphabets=config.batch_alphabets,
            characters=config.batch_characters,
            drawers=config.batch_drawers,
        )
        train = character_batch_dataset(
            splits["train"], image_size=size, steps=None, seed=config.seed,
            distortion=distortion, turn=config.quarter_turns, mirror_characters=config.mirror,
            first_step=first_step, **shape,
        )
        val = character_batch_dataset(
            splits["validation"], image_size=size, steps=config.val_pair_steps,
            seed=config.seed + 1, distortion=None, **batch_shape_within(splits["validation"], shape),
        )
        return train, val.cache()
    train = pair_dataset(
        splits["train"], image_size=size, batch_size=config.batch_size,
        steps=None, seed=config.seed, distortion=distortion,
        within_alphabet=config.within_alphabet, turn=config.quarter_turns,
        mirror_characters=config.mirror,
        first_step=first_step,
    )
    # Fixed validation pairs: drawn once and cached, so val_loss is comparable.
    val = pair_dataset(
        splits["validation"], image_size=size, batch_size=config.batch_size,
        steps=config.val_pair_steps, seed=config.seed + 1, distortion=None,
    )
    return train, val.cache()


def epoch_minutes(run_dir: str | Path) -> list[float]:
    """Minutes from the start of training to the end of each epoch, from the TensorBoard logs.

    The TensorBoard callback time-stamps each epoch's validation metrics; the training
    writer's first event marks the start. A resumed run counts the time it was stopped.
    """
    from tensorflow.core.util import event_pb2

    def events(folder: str):
        for path in sorted((Path(run_dir) / "tensorboard" / folder).glob("events.out.tfevents.*")):
            for record in tf.data.TFRecordDataset(str(path)):
                yield event_pb2.Event.FromString(record.numpy())

    start = min((event.wall_time for event in events("train")), default=None)
    ends = {
        event.step: event.wall_time
        for event in events("validation")
        if any(value.tag == "epoch_one_shot_accuracy" for value in event.summary.value)
    }
    if start is None:
        return []
    return [(ends[step] - start) / 60.0 for step in sorted(ends)]


def read_history(log_path: str | Path) -> dict[str, list[float]]:
    """Per-epoch metrics from a run's ``log.csv``, as lists keyed by column."""
    with Path(log_path).open() as f:
        rows = list(csv.DictReader(f))
    return {key: [float(row[key]) for row in rows] for key in (rows[0] if rows else {})}
