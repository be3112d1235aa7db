"""``python -m keras_siamese.fit``: train, evaluate and export in one command.

Loads Omniglot, trains a Siamese network with ``model.fit`` on the paper's
split, scores it on Lake et al.'s 20 one-shot runs, and exports a SavedModel
for TensorFlow Serving. Everything lands in a run folder (see
``keras_siamese.training``) plus ``metrics.json``, the learning curves and a
sheet of Lake's trials as the model scored them (``one_shot_tasks.png``).
With ``--members N`` (``--preset cpu-long``: three ``cpu`` networks) it
trains N networks, each in a run folder of its own, and reports and exports
their ensemble, the mean of their scores.

With ``--images DIR`` it does the same for a folder of the user's own classes (one
subfolder per class, or group/class): the classes are split into train, validation and test
(``split.json``), and the report is on the test classes: N-way 1-shot and K-shot accuracy,
verification ROC AUC and equal error rate, and the threshold for "none of these" that the
SavedModel carries (``roc.png``, ``one_shot_tasks.png``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from keras_siamese.config import (
    BOUNDS, CHANNELS, DEFAULT_PRESET, FOLDER_PRESET, PAIR_SAMPLING, PRESETS, STRATEGIES,
    TrainConfig, add_tta_arguments,
)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m keras_siamese.fit``."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_siamese.fit",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help=f"starting configuration (default: {DEFAULT_PRESET!r}, with --images "
        f"{FOLDER_PRESET!r}): 'cpu' trains in under 20 minutes on 2 CPU cores, "
        "'cpu-long' three cpu networks (an ensemble) in under an hour; "
        "'koch2015' is the paper's protocol at 105x105 "
        "(meant for a GPU); "
        "'smoke' is a tiny network for trying the pipeline; 'folder' three cpu networks "
        "for a folder of a few hundred images (about 3 minutes for 400)",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-dir",
        default=None,
        help="folder holding the Omniglot zips (default: $KERAS_SIAMESE_DATA_DIR, "
        "else ../shared/data/omniglot beside the checkout, else download)",
    )
    data.add_argument(
        "--tfds-dir", default=None, help="where TFDS keeps the prepared dataset (default: TFDS's)"
    )
    own = parser.add_argument_group("your own images (instead of Omniglot)")
    own.add_argument("--images", metavar="DIR", default=None,
                     help="a folder of classes: one subfolder per class, or group/class for "
                     "tasks within a group; PNG, JPEG, GIF, BMP, PGM/PPM, TIFF or WebP")
    own.add_argument("--channels", type=int, choices=CHANNELS, default=None,
                     help="1: grey scale, 3: colour (default: 1)")
    own.add_argument("--split", metavar="FILE", default=None,
                     help="the split.json of an earlier run: the same train, validation and "
                     "test classes (default: a new split drawn with --seed)")
    own.add_argument("--cache-dir", default=None,
                     help="where the prepared images are kept (default: "
                     "$KERAS_SIAMESE_CACHE_DIR, else ~/.cache/keras_siamese/folders)")
    own.add_argument("--init-from", metavar="RUN_DIR", default=None,
                     help="start from this trained network (a run folder or .keras file of "
                     "the same architecture, e.g. an Omniglot cpu run) instead of from scratch")
    own.add_argument("--way", type=_checked("way"), default=None,
                     help="N of the N-way tasks (default: 20, or the classes of the smallest "
                     "of the validation and test splits)")
    own.add_argument("--shots", type=_checked("shots"), default=None,
                     help="K of the K-shot tasks reported beside 1-shot, where a class scores "
                     "its nearest shot (default: 5, or fewer where the test classes have "
                     "fewer images)")
    own.add_argument("--target-far", type=_checked("target_far"), default=None,
                     help="choose the 'none of these' threshold with at most this "
                     "false-accept rate on validation classes (default: the equal error rate)")
    out = parser.add_argument_group("output")
    out.add_argument("--runs-dir", default="runs", help="parent folder of new run folders")
    out.add_argument(
        "--run-dir",
        metavar="DIR",
        default=None,
        help="the run folder, instead of a new one under --runs-dir: a killed run there with the "
        "same configuration resumes (what a restarted worker of a cluster runs)",
    )
    out.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue a killed run from its last finished epoch, with its config.json "
        "(a run killed after training goes straight to evaluation and export)",
    )
    out.add_argument("--export-dir", default="saved_models", help="TF Serving base folder")
    out.add_argument("--model-name", default="siamese", help="model name under --export-dir")
    out.add_argument("--no-export", action="store_true", help="skip the SavedModel export")
    hardware = parser.add_argument_group("hardware")
    hardware.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="auto",
        help="the tf.distribute strategy: 'one' device; 'mirrored' over the local GPUs; "
        "'multi-worker' over the workers that TF_CONFIG names (needs --run-dir, the same on "
        "every worker; worker 0 writes the results); 'auto': multi-worker under a TF_CONFIG "
        "cluster, else mirrored with more than one GPU, else one. The batch size is the "
        "global batch, shared by the replicas",
    )
    over = parser.add_argument_group("overrides (default: the preset's value)")
    for field in (
        "seed", "epochs", "steps_per_epoch", "batch_size", "patience", "image_size", "train_drawers",
        "dense_units",
    ):
        over.add_argument(f"--{field.replace('_', '-')}", type=_checked(field), default=None)
    over.add_argument("--val-tasks", type=_checked("val_tasks"), default=None,
                      help="one-shot validation tasks each epoch, on which the best epoch is kept "
                      "(the paper: 320)")
    over.add_argument("--filters", type=_checked("filters"), nargs="+", default=None, metavar="N",
                      help="output channels of each convolution (as many as the preset has)")
    over.add_argument("--dropout", type=_checked("dropout"), default=None, metavar="RATE",
                      help="dropout on the flattened features before the dense layer, while "
                      "training (0: none)")
    over.add_argument("--l2", type=BOUNDS["l2_factor"].parser("l2"), default=None, metavar="F",
                      help="L2 factor on the weights of each convolution and the dense layer")
    for field in ("learning_rate", "lr_decay", "within_alphabet", "ema_momentum"):
        over.add_argument(f"--{field.replace('_', '-')}", type=_checked(field), default=None)
    over.add_argument("--focal-gamma", type=_checked("focal_gamma"), default=None, metavar="G",
                      help="weight each training pair's cross-entropy by (1 - p_t)^G, p_t the "
                      "probability of the right answer: focal loss (0: the paper's loss)")
    over.add_argument("--max-minutes", type=_checked("max_minutes"), default=None,
                      help="end training within this many minutes: no epoch starts that "
                      "might end past it (0: no limit)")
    over.add_argument("--members", type=_checked("members"), default=None,
                      help="train this many networks (seeds --seed, --seed + 1, ...) one after "
                      "another and score with their mean: an ensemble")
    over.add_argument("--optimizer", choices=("sgd", "adam"), default=None)
    over.add_argument(
        "--pair-sampling",
        choices=PAIR_SAMPLING,
        default=None,
        help="'random': the paper's batches of independent pairs; 'all': every pair of "
        "batches of characters; 'alphabet': every pair within each alphabet of those batches",
    )
    over.add_argument(
        "--mixed-precision",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mixed bfloat16 compute, with the cpu presets' bfloat16 recipe (75 epochs, "
        "x0.97 per epoch); faster only on GPUs from Ampere on and on CPUs with AMX or "
        "AVX-512 BF16, many times slower elsewhere (docs/ablations.md; "
        "default: on for the cpu presets where bfloat16 is fast, else off)",
    )
    over.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None,
                      help="batch normalisation after each convolution")
    over.add_argument("--batch-norm-momentum", type=_checked("batch_norm_momentum"),
                      help="momentum of batch normalisation's moving mean and variance")
    over.add_argument("--monotone-head", action=argparse.BooleanOptionalAction, default=None,
                      help="keep the head's weights at or below zero, so the probability of "
                      "'same' falls as any component distance grows")
    over.add_argument("--distort", action=argparse.BooleanOptionalAction, default=None,
                      help="the paper's affine distortions of training pairs")
    over.add_argument("--distortion-strength", type=_checked("distortion_strength"), default=None,
                      help="multiplies the distortions' ranges (rotation, shear, scale's distance "
                      "from 1, translation; 1: the paper's)")
    over.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                      help="mirror each training image left to right with probability 0.5, "
                      "on its own: for photographs (faces, objects), not characters")
    over.add_argument("--quarter-turns", action=argparse.BooleanOptionalAction, default=None,
                      help="turn each training character by a random number of quarter turns "
                      "(four times the characters to tell apart)")
    over.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None,
                      help="mirror each training character with probability 0.5 (twice the "
                      "characters to tell apart)")
    add_tta_arguments(over, overrides=True)
    return parser


def _distribution(args: argparse.Namespace):
    """The strategy of ``--strategy``, created before any other TensorFlow operation (as a
    multi-worker strategy must be)."""
    from keras_siamese.distribute import DistributionError, make_strategy

    if args.strategy in ("auto", "multi-worker") and not (args.run_dir or args.resume):
        from keras_siamese.distribute import cluster_size, tf_config

        try:  # auto's rule: several workers where TF_CONFIG names more than one task
            cluster = args.strategy == "multi-worker" or cluster_size(tf_config()) > 1
        except DistributionError as error:
            raise SystemExit(f"error: {error}") from None
        if cluster:
            raise SystemExit(
                "error: training on several workers needs --run-dir (or --resume): the same "
                "run folder on every worker, on storage that all of them see"
            )
    try:
        return make_strategy(args.strategy)
    except DistributionError as error:
        raise SystemExit(f"error: {error}") from None


def _checked(field: str):
    """The argparse type of a numeric option: its ``config.BOUNDS``, checked as it is parsed."""
    bounds = BOUNDS["dense_units" if field == "filters" else field]
    return bounds.parser(field.replace("_", "-"))


# The ModelConfig fields that have a command-line override.
_MODEL_OVERRIDES = {
    "image_size", "channels", "filters", "dense_units", "dropout", "mixed_precision",
    "batch_norm", "batch_norm_momentum", "monotone_head",
}


def resolve_config(args: argparse.Namespace) -> tuple[TrainConfig, Path]:
    """The run's configuration and folder from the command-line arguments."""
    overrides = {
        name: value
        for name, value in vars(args).items()
        if value is not None
        and name in {f.name for f in dataclasses.fields(TrainConfig)} | _MODEL_OVERRIDES
        and name != "preset"
    }
    if "filters" in overrides:
        overrides["filters"] = tuple(overrides["filters"])
    for name in ("images", "init_from"):  # recorded as absolute paths: a resume finds them
        if name in overrides:
            overrides[name] = str(Path(overrides[name]).resolve())
    init_from = Path(overrides.get("init_from", ""))
    if "init_from" in overrides and not (init_from.is_file() or (init_from / "best.keras").is_file()):
        raise SystemExit(
            f"error: --init-from {args.init_from}: neither a .keras file nor a run folder with "
            "best.keras"
        )
    if "channels" in overrides and args.images is None:
        raise SystemExit("error: --channels is for --images; Omniglot is grey scale")
    if args.resume and args.run_dir:
        raise SystemExit("error: --resume continues a run folder with its own config.json; "
                         "--run-dir names the folder of this command's configuration: choose one")
    if args.resume:
        run_dir = Path(args.resume)
        config_path = run_dir / "config.json"
        if not config_path.is_file():
            raise SystemExit(f"--resume: no config.json in {run_dir}")
        if overrides:
            raise SystemExit("--resume takes the run's own config.json; drop the overrides")
        try:
            return TrainConfig.load(config_path), run_dir
        except (ValueError, TypeError, KeyError) as error:  # truncated, edited or foreign
            raise SystemExit(
                f"error: --resume: {config_path} is not a readable run configuration ({error}); "
                "restore it, or start a new run"
            ) from None
    from keras_siamese.hardware import adapt_to_machine

    preset = args.preset or (FOLDER_PRESET if args.images else DEFAULT_PRESET)
    try:
        config = adapt_to_machine(preset, overrides.pop("mixed_precision", None))
        config = config.replace(**overrides)
        if args.l2 is not None:  # each convolution and the dense layer; the head keeps its own
            config = config.replace(l2=(args.l2,) * (len(config.model.filters) + 1)
                                    + config.model.l2[-1:])
    except ValueError as error:  # an override out of range
        raise SystemExit(f"error: {error}") from None
    if args.run_dir:
        return config, Path(args.run_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return config, Path(args.runs_dir) / f"{stamp}-{config.preset}-seed{config.seed}"


def main(argv: list[str] | None = None) -> dict:
    """Runs the whole pipeline; returns the metrics written to ``metrics.json``."""
    args = build_parser().parse_args(argv)
    distribution = _distribution(args)
    config, run_dir = resolve_config(args)
    from keras_siamese.reporting import (
        RefusedModelError, check_trained, evaluate_and_export, fit_to_folder, folder_report,
        folder_summary, load_data, load_folder, summary, train_and_report, write_metrics,
    )

    started = time.monotonic()
    precision = config.machine_adaptation or (
        "mixed bfloat16" if config.model.mixed_precision else "float32"
    )
    print(f"keras-siamese: preset {config.preset!r} in {precision}, run folder {run_dir}, "
          f"{distribution.describe()}")
    if config.images is not None:
        splits = load_folder(config, run_dir, args.split, args.cache_dir, write=distribution.chief)
        told = frozenset(name for name in ("way", "shots") if getattr(args, name) is not None)
        config = fit_to_folder(config, splits, told)
    else:
        splits, runs = load_data(args.data_dir, args.tfds_dir, config.train_drawers)

    from keras_siamese.training import IncompatibleNetworkError

    try:
        model, trained = train_and_report(config, splits, run_dir, distribution)
    except (IncompatibleNetworkError, FileNotFoundError) as error:  # --init-from
        raise SystemExit(f"error: {error}") from None
    except ValueError as error:  # a batch that the replicas cannot share
        raise SystemExit(f"error: {error}") from None
    if not distribution.chief:
        print(f"Worker {distribution.worker}: training done; the chief writes the report and "
              f"the export into {run_dir}")
        distribution.barrier()
        return {}
    best_val = trained.get("best_val_one_shot_accuracy", trained.get("val_one_shot_accuracy"))
    try:
        check_trained(model, best_val, config.way, config.val_tasks)
    except RefusedModelError as error:
        raise SystemExit(f"error: {error} The run folder keeps what was trained: {run_dir}") from None

    export_dir = None if args.no_export else args.export_dir
    if config.images is not None:
        metrics = folder_report(
            model, splits, run_dir, config, export_dir=export_dir, model_name=args.model_name
        )
    else:
        metrics = evaluate_and_export(
            model, splits, runs, run_dir, way=config.way, seed=config.seed,
            export_dir=export_dir, model_name=args.model_name,
            tta_views=config.tta_views, tta_symmetries=config.tta_symmetries,
        )  # fmt: skip
    metrics.update(trained)
    write_metrics(metrics, run_dir, started)
    epochs = " + ".join(str(n) for n in metrics.get("member_epochs", [metrics.get("epochs")]))
    report = folder_summary(metrics) if config.images is not None else summary(metrics)
    print(report + f"\nTrained {epochs} epochs in {trained['train_seconds'] / 60:.1f} min; "
          f"total {metrics['total_seconds'] / 60:.1f} min\nRun folder: {run_dir}")
    distribution.barrier()  # the other workers wait for the results
    return metrics


if __name__ == "__main__":
    main()
