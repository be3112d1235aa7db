"""Tests for the command line of `python -m keras_siamese.fit`: its parser and the config it resolves.

tests/end_to_end/test_fit_command.py runs the command itself, as a user does.
"""

from __future__ import annotations

import json
import os

import pytest

OPTIONS = [
    "--preset",
    "--data-dir",
    "--tfds-dir",
    "--runs-dir",
    "--run-dir",
    "--strategy",
    "--resume",
    "--export-dir",
    "--model-name",
    "--no-export",
    "--seed",
    "--epochs",
    "--steps-per-epoch",
    "--batch-size",
    "--pair-sampling",
    "--patience",
    "--image-size",
    "--filters",
    "--dense-units",
    "--train-drawers",
    "--val-tasks",
    "--learning-rate",
    "--lr-decay",
    "--within-alphabet",
    "--ema-momentum",
    "--focal-gamma",
    "--max-minutes",
    "--members",
    "--batch-norm",
    "--batch-norm-momentum",
    "--no-batch-norm",
    "--optimizer",
    "--mixed-precision",
    "--no-mixed-precision",
    "--distort",
    "--no-distort",
    "--distortion-strength",
    "--quarter-turns",
    "--no-quarter-turns",
    "--mirror",
    "--no-mirror",
    "--flip",
    "--no-flip",
    "--dropout",
    "--l2",
    "--monotone-head",
    "--no-monotone-head",
    "--tta-views",
    "--tta-symmetries",
    "--images",
    "--channels",
    "--split",
    "--cache-dir",
    "--init-from",
    "--way",
    "--shots",
    "--target-far",
]


def test_parser_has_no_undocumented_options():
    from keras_siamese import fit

    parser_options = {
        option
        for action in fit.build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    assert parser_options == set(OPTIONS)


def test_overrides_land_in_the_config(tmp_path):
    from keras_siamese import fit
    from keras_siamese.config import preset

    args = fit.build_parser().parse_args([
        "--preset", "cpu-long", "--seed", "3", "--epochs", "7", "--lr-decay", "0.5",
        "--learning-rate", "0.002", "--image-size", "40", "--no-distort", "--mixed-precision",
        "--distortion-strength", "1.5", "--quarter-turns", "--mirror",
        "--filters", "8", "16", "16", "32", "--dense-units", "64", "--runs-dir", str(tmp_path),
        "--tta-views", "8", "--tta-symmetries", "1", "--dropout", "0.25", "--l2", "1e-4",
        "--monotone-head", "--batch-norm-momentum", "0.9",
    ])  # fmt: skip
    config, run_dir = fit.resolve_config(args)
    # The overrides win over the preset's bfloat16 recipe (75 epochs, x0.97) too.
    assert config.machine_adaptation == "mixed bfloat16, as told (--mixed-precision)"
    assert config.replace(machine_adaptation="") == preset("cpu-long").replace(
        seed=3, epochs=7, lr_decay=0.5, learning_rate=0.002, image_size=40, distort=False,
        distortion_strength=1.5, quarter_turns=True, mirror=True, filters=(8, 16, 16, 32),
        dense_units=64, mixed_precision=True, tta_views=8, tta_symmetries=1, dropout=0.25,
        l2=(1e-4,) * 5 + (0.0,), monotone_head=True, batch_norm_momentum=0.9,
    )
    assert run_dir.parent == tmp_path and run_dir.name.endswith("-cpu-long-seed3")


def test_precision_follows_the_flag_else_the_hardware(tmp_path):
    from keras_siamese import fit
    from keras_siamese.config import BFLOAT16_RECIPES, preset
    from keras_siamese.hardware import fast_bfloat16_hardware

    def resolved(*flags):
        args = fit.build_parser().parse_args([*flags, "--runs-dir", str(tmp_path)])
        config = fit.resolve_config(args)[0]
        # What was decided is recorded with the run; the rest is the preset.
        assert config.machine_adaptation.startswith(
            "mixed bfloat16" if config.model.mixed_precision else "float32"
        )
        return config.replace(machine_adaptation="")

    # Explicit flags, the same on every machine.
    assert resolved("--preset", "cpu", "--no-mixed-precision") == preset("cpu")
    assert resolved("--preset", "cpu", "--mixed-precision") == preset("cpu").replace(
        mixed_precision=True, epochs=75, lr_decay=0.97
    )
    assert resolved("--preset", "koch2015", "--mixed-precision") == preset("koch2015").replace(
        mixed_precision=True
    )
    # Unset: bfloat16 for the presets with a bfloat16 recipe where it is fast here.
    fast = fast_bfloat16_hardware() is not None
    for name in ("cpu", "cpu-long", "koch2015", "smoke"):
        config = resolved("--preset", name)
        assert config.model.mixed_precision == (fast and name in BFLOAT16_RECIPES), name
        assert config == preset(name, config.model.mixed_precision)


# A parent that holds 2 GiB starts a child that reports its peak memory, as pytest or a
# notebook kernel starts `fit`. Linux carries the parent's resident memory into the child's
# ru_maxrss; the run's peak memory must be the child's own.
PARENT_OF_A_SMALL_CHILD = """
import json, subprocess, sys
held = b"x" * (2 * 1024**3)
child = (
    "import json, resource; from keras_siamese.hardware import peak_memory_mib; "
    "print(json.dumps([peak_memory_mib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]))"
)
print(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                     check=True).stdout)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's /proc")
def test_peak_memory_is_the_process_own_not_its_parents(run_python):
    result = run_python("-c", PARENT_OF_A_SMALL_CHILD, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    peak_mib, ru_maxrss_kib = json.loads(result.stdout)
    assert ru_maxrss_kib / 1024 > 2048  # what the parent's 2 GiB does to ru_maxrss
    assert 0 < peak_mib < 1536  # the child itself: Python and TensorFlow imported


@pytest.mark.parametrize(
    "flags, message",
    [(("--epochs", "0"), "epochs must be at least 1, got 0"),
     (("--steps-per-epoch", "0"), "steps-per-epoch must be at least 1, got 0"),
     (("--val-tasks", "0"), "val-tasks must be at least 1, got 0"),
     (("--learning-rate", "nan"), "learning-rate must be a finite number, got nan"),
     (("--learning-rate", "-0.1"), "learning-rate must be above 0, got -0.1"),
     (("--lr-decay", "1.5"), "lr-decay must be at most 1, got 1.5"),
     (("--within-alphabet", "2"), "within-alphabet must be at most 1, got 2"),
     (("--max-minutes", "inf"), "max-minutes must be a finite number, got inf"),
     (("--train-drawers", "21"), "train-drawers must be at most 20, got 21"),
     (("--filters", "8", "0", "8", "8"), "filters must be at least 1, got 0"),
     (("--dropout", "1"), "dropout must be below 1, got 1"),
     (("--batch-norm-momentum", "1"), "batch-norm-momentum must be below 1, got 1"),
     (("--l2", "-0.5"), "l2 must be at least 0, got -0.5"),
     (("--seed", "x"), "seed: not a number: 'x'")],
)  # fmt: skip
def test_numeric_options_are_checked_when_parsed(flags, message, capsys):
    from keras_siamese import fit

    with pytest.raises(SystemExit) as exit_:
        fit.build_parser().parse_args(list(flags))
    assert exit_.value.code == 2  # argparse's usage error: nothing has run
    assert message in capsys.readouterr().err


def test_images_pick_the_folder_preset_and_record_absolute_paths(tmp_path):
    from keras_siamese import fit

    (tmp_path / "trained.keras").write_bytes(b"")
    args = fit.build_parser().parse_args([
        "--images", str(tmp_path), "--channels", "3", "--init-from", str(tmp_path / "trained.keras"), "--way", "5",
        "--shots", "3", "--target-far", "0.01", "--flip", "--runs-dir", str(tmp_path),
    ])  # fmt: skip
    config, run_dir = fit.resolve_config(args)
    assert config.preset == "folder" and run_dir.name.endswith("-folder-seed0")
    assert config.images == str(tmp_path.resolve())
    assert config.init_from == str((tmp_path / "trained.keras").resolve())
    assert (config.model.channels, config.way, config.shots, config.target_far) == (3, 5, 3, 0.01)
    assert config.flip and not config.quarter_turns
    # Omniglot is grey scale; the default preset without --images is still cpu.
    with pytest.raises(SystemExit, match="--channels is for --images"):
        fit.resolve_config(fit.build_parser().parse_args(["--channels", "3"]))
    assert fit.resolve_config(fit.build_parser().parse_args([]))[0].preset == "cpu"
    with pytest.raises(SystemExit, match="--init-from .*neither a .keras file nor a run folder"):
        fit.resolve_config(fit.build_parser().parse_args(["--init-from", str(tmp_path / "no")]))
    with pytest.raises(SystemExit):
        fit.build_parser().parse_args(["--images", str(tmp_path), "--target-far", "1.5"])
