"""Training on two workers of ``MultiWorkerMirroredStrategy``, processes talking over loopback.

Each worker is a fresh interpreter with its own ``TF_CONFIG``, as on a cluster; the smoke
network keeps the runs short. A one-worker run on the same global batch and seed is the
reference.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import log_rows, subprocess_env

from keras_siamese.distribute import loopback_cluster

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("distributed_worker.py")
# Four epochs of ten steps: the kill lands after two, with two still to run.
EPOCHS, STEPS = 4, 10
# Worker 1 is killed once the chief has backed up this many epochs.
KILL_AFTER = 2
# Float rounding differs between one process and two replicas (the fused batch-norm kernel
# against synchronised statistics, the order of the gradient sums), and training carries the
# difference from step to step; the per-epoch loss stays well within this of the one-worker
# run's (docs/benchmarks.md, "Two workers against one").
LOSS_TOLERANCE = 0.02


def environment(tf_config: dict | None) -> dict[str, str]:
    env = subprocess_env()
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def start_workers(args: list[str], cwds: list[Path], cluster: bool = True) -> list[subprocess.Popen]:
    """One process per folder of ``cwds`` running ``python ARGS`` there; with ``cluster``, the
    workers of one loopback cluster, each with its ``TF_CONFIG``."""
    configs = loopback_cluster(len(cwds)) if cluster else [None] * len(cwds)
    processes = []
    for cwd, config in zip(cwds, configs):
        cwd.mkdir(parents=True, exist_ok=True)
        processes.append(subprocess.Popen(
            [sys.executable, *args], cwd=cwd, env=environment(config), text=True,
            stdout=open(cwd / "stdout.log", "a"), stderr=subprocess.STDOUT,
        ))  # fmt: skip
    return processes


def finish(processes: list[subprocess.Popen], timeout: float) -> list[int]:
    """The exit codes of ``processes``, killing them all if one outlives ``timeout``."""
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(max(1.0, deadline - time.monotonic())) for p in processes]
    except subprocess.TimeoutExpired:
        for p in processes:
            p.kill()
        raise


def output(cwd: Path) -> str:
    return (cwd / "stdout.log").read_text()


@pytest.fixture(scope="module")
def data_options(omniglot, omniglot_dir, tfds_dir) -> list[str]:
    """The fit options of every run here: smoke with the paper's layer-wise SGD, 4 x 10 steps,
    the prepared Omniglot."""
    return [
        "--preset", "smoke", "--optimizer", "sgd", "--learning-rate", "0.03",
        "--epochs", str(EPOCHS), "--steps-per-epoch", str(STEPS),
        "--data-dir", str(omniglot_dir), "--tfds-dir", str(tfds_dir),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def training_runs(data_options, tmp_path_factory):
    """An uninterrupted two-worker run and a one-worker run of ``training.train``, together."""
    root = tmp_path_factory.mktemp("distributed")
    two, one = root / "two", root / "one"
    workers = start_workers(
        [str(WORKER), str(two), "multi-worker", *data_options],
        [two / "worker0", two / "worker1"],
    )  # fmt: skip
    single = start_workers(
        [str(WORKER), str(one), "one", *data_options], [one / "worker0"], cluster=False
    )
    codes = finish(workers + single, timeout=400)
    logs = [output(two / "worker0"), output(two / "worker1"), output(one / "worker0")]
    assert codes == [0, 0, 0], "\n\n".join(log[-3000:] for log in logs)

    def record(folder: Path, worker: int) -> dict:
        result = json.loads((folder / f"worker{worker}.json").read_text())
        result["weights"] = list(np.load(folder / f"worker{worker}.npz").values())
        return result

    return {"two": [record(two, 0), record(two, 1)], "one": record(one, 0), "root": root}


def test_both_workers_hold_identical_weights(training_runs):
    first, second = training_runs["two"]
    assert len(first["weights"]) == len(second["weights"]) > 0
    for a, b in zip(first["weights"], second["weights"]):
        np.testing.assert_array_equal(a, b)
    assert first["steps"] == second["steps"] and len(first["steps"]) == EPOCHS * STEPS


def test_two_workers_train_as_one_worker_on_the_same_global_batch(training_runs):
    two, one = training_runs["two"][0], training_runs["one"]
    # The first step's loss is computed before any update: the same batch, split over the
    # workers, through the same initial weights.
    assert two["steps"][0] == pytest.approx(one["steps"][0], rel=1e-5)
    assert len(two["epochs"]) == len(one["epochs"]) == EPOCHS
    for epoch_two, epoch_one in zip(two["epochs"], one["epochs"]):
        assert abs(epoch_two["loss"] - epoch_one["loss"]) < LOSS_TOLERANCE
        assert abs(epoch_two["val_loss"] - epoch_one["val_loss"]) < LOSS_TOLERANCE
        assert 0.0 <= epoch_two["val_one_shot_accuracy"] <= 1.0


def test_only_the_chief_writes_the_run_folder(training_runs):
    run = training_runs["root"] / "two" / "run"
    assert {p.name for p in run.iterdir()} >= {"config.json", "log.csv", "best.keras", "tensorboard"}
    assert len(log_rows(run)) == EPOCHS
    # Worker 1 wrote into its own folder only what the test asked of it.
    assert {p.name for p in (training_runs["root"] / "two" / "worker1").iterdir()} == {"stdout.log"}


def test_a_killed_worker_resumes_and_the_run_ends_as_it_would_have(
    training_runs, data_options, tmp_path
):
    """Worker 1 is killed mid-run; the chief's collective fails; both are started again, as
    a cluster restarts its failed workers, and resume from the chief's last backup."""
    run = tmp_path / "run"
    cwds = [tmp_path / "worker0", tmp_path / "worker1"]
    command = [
        "-m", "keras_siamese.fit", *data_options, "--strategy", "multi-worker",
        "--run-dir", str(run), "--no-export",
    ]  # fmt: skip
    workers = start_workers(command, cwds)
    metadata = run / "backup" / "latest" / "training_metadata.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and all(p.poll() is None for p in workers):
        try:
            if json.loads(metadata.read_text())["epoch"] >= KILL_AFTER:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    else:
        finish(workers, timeout=1)
        pytest.fail("no backup of epoch 2 appeared:\n" + output(cwds[0])[-3000:])
    workers[1].send_signal(signal.SIGKILL)
    codes = finish(workers, timeout=120)
    assert codes[1] == -signal.SIGKILL
    assert codes[0] != 0, "the chief went on without worker 1"
    done_before = len(log_rows(run))
    assert KILL_AFTER <= done_before < EPOCHS

    restarted = start_workers(command, cwds)
    assert finish(restarted, timeout=400) == [0, 0], output(cwds[0])[-3000:]
    second_start = output(cwds[0]).rsplit("keras-siamese: preset", 1)[1]
    assert f"Epoch {done_before + 1}/{EPOCHS}" in second_start
    assert "Epoch 1/" not in second_start
    # The same epochs and losses as the uninterrupted two-worker run.
    rows = log_rows(run)
    assert [int(row["epoch"]) for row in rows] == list(range(EPOCHS))
    uninterrupted = training_runs["two"][0]["epochs"]
    for row, expected in zip(rows, uninterrupted):
        assert float(row["loss"]) == pytest.approx(expected["loss"], abs=1e-4)
        assert float(row["val_one_shot_accuracy"]) == pytest.approx(
            expected["val_one_shot_accuracy"], abs=1e-6
        )
    assert (run / "metrics.json").is_file() and not (run / "backup").exists()
    assert "the chief writes the report" in output(cwds[1])
    assert {p.name for p in cwds[1].iterdir()} == {"stdout.log"}
    assert not (cwds[0] / "saved_models").exists()  # --no-export


def test_keras_still_needs_the_compat_patch(tmp_path):
    """``model.fit`` under MultiWorkerMirroredStrategy without ``keras_compat.patch_keras``.

    When this test fails, Keras has fixed keras-team/keras#20585: remove
    ``keras_siamese/keras_compat.py`` and its call in ``distribute.make_strategy``.
    """
    script = tmp_path / "plain_fit.py"
    script.write_text(
        "import keras, tensorflow as tf\n"
        "strategy = tf.distribute.MultiWorkerMirroredStrategy()\n"
        "with strategy.scope():\n"
        "    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])\n"
        "    model.compile('sgd', 'mse')\n"
        "data = tf.data.Dataset.from_tensor_slices((tf.ones((32, 4)), tf.ones((32, 1))))\n"
        "model.fit(data.batch(8).repeat(), epochs=1, steps_per_epoch=2, verbose=0)\n"
        "print('fit ran')\n"
    )
    cwds = [tmp_path / "worker0", tmp_path / "worker1"]
    codes = finish(start_workers([str(script)], cwds), timeout=180)
    logs = [output(cwd) for cwd in cwds]
    assert codes != [0, 0], (
        "model.fit now works under MultiWorkerMirroredStrategy without keras_compat: "
        "remove the patch"
    )
    assert any("PerReplica" in log for log in logs), "\n\n".join(log[-2000:] for log in logs)


REPLICA_STEP = """
import json
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras
import numpy as np

from keras_siamese import training
from keras_siamese.config import ModelConfig
from keras_siamese.model import build_all_pairs_trainer, build_siamese

config = ModelConfig(image_size=28, filters=(4, 8, 8, 8), kernel_sizes=(5, 3, 3, 3),
                     dense_units=16, padding="same", batch_norm=False, l2=(0.0,) * 6)
x = np.random.default_rng(0).random((16, 28, 28, 1), np.float32)
y = np.repeat(np.arange(8), 2)  # each replica's half holds whole characters

def trainer():
    model = build_all_pairs_trainer(build_siamese(config), 1)
    model.compile(keras.optimizers.SGD(0.5), training.AllPairsCrossEntropy())
    return model

keras.utils.set_random_seed(0)
with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
    mirrored = trainer()
start = mirrored.get_weights()
history = mirrored.fit(tf.data.Dataset.from_tensors((x, y)), epochs=1, verbose=0).history

plain = trainer()
plain.set_weights(start)
losses, gradients = [], []
for half in (slice(0, 8), slice(8, 16)):
    with tf.GradientTape() as tape:
        loss = plain.loss(y[half], plain(x[half], training=True))
    losses.append(float(loss))
    gradients.append(tape.gradient(loss, plain.trainable_weights))
expected = [w - 0.5 * (a + b).numpy() / 2 for w, a, b in zip(start, *gradients)]
print(json.dumps({
    "loss": history["loss"][0], "expected_loss": float(np.mean(losses)),
    "error": max(float(np.abs(a - b).max()) for a, b in zip(mirrored.get_weights(), expected)),
    "step": max(float(np.abs(a - b).max()) for a, b in zip(expected, start)),
}))
"""


def test_each_replicas_all_pairs_loss_counts_once(run_python, tmp_path):
    """Two replicas' all-pairs step is the mean of their two steps: Keras divides a loss by
    the replicas only when it reduces a batch of values, which ``AllPairsCrossEntropy`` gives
    it, and sums the replicas' gradients."""
    script = tmp_path / "replica_step.py"
    script.write_text(REPLICA_STEP)
    result = run_python(script, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["loss"] == pytest.approx(figures["expected_loss"], rel=1e-5)
    assert figures["step"] > 1e-4  # the step moved the weights
    assert figures["error"] < 1e-3 * figures["step"]


def test_two_workers_train_in_mixed_bfloat16(omniglot, omniglot_dir, tfds_dir, tmp_path):
    """Mixed bfloat16 under two workers, through the one-shot validation, whose embeddings are
    gathered from both workers in bfloat16."""
    options = [
        "--preset", "smoke", "--mixed-precision", "--epochs", "1", "--steps-per-epoch", "3",
        "--data-dir", str(omniglot_dir), "--tfds-dir", str(tfds_dir),
    ]  # fmt: skip
    cwds = [tmp_path / "worker0", tmp_path / "worker1"]
    codes = finish(start_workers([str(WORKER), str(tmp_path), "multi-worker", *options], cwds), 300)
    assert codes == [0, 0], output(cwds[0])[-3000:]
    first, second = (np.load(tmp_path / f"worker{i}.npz") for i in (0, 1))
    for a, b in zip(first.values(), second.values()):
        np.testing.assert_array_equal(a, b)
    epoch = json.loads((tmp_path / "worker0.json").read_text())["epochs"][0]
    assert 0.0 <= epoch["val_one_shot_accuracy"] <= 1.0 and np.isfinite(epoch["loss"])
