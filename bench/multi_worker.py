"""One worker against two on loopback: the same run of ``fit`` under ``--strategy multi-worker``.

    python bench/multi_worker.py [--preset cpu] [--epochs 3] [--steps-per-epoch 20]

Runs ``python -m keras_siamese.fit`` twice with the same seed and global batch, one after the
other: once as one process (``--strategy one``), once as two worker processes talking over
loopback (``--strategy multi-worker``, each with its ``TF_CONFIG``). Prints each epoch's training
loss and one-shot validation accuracy for both, the median step time that Keras reports (the
epochs after the first, which traces), and the two-worker run's time per step as a ratio of the
one-worker run's. Both workers share this machine's cores, so the ratio measures what
distribution costs here (collectives, every worker computing the whole pair stream), not a
speed-up; on a cluster each worker has a machine of its own.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import print_machine

from keras_siamese.distribute import loopback_cluster

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_fit(options: list[str], run_dir: Path, workers: int) -> str:
    """Runs ``fit`` in ``run_dir`` on ``workers`` processes; returns the chief's output."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    strategy = "multi-worker" if workers > 1 else "one"
    command = [sys.executable, "-m", "keras_siamese.fit", *options, "--strategy", strategy,
               "--run-dir", str(run_dir), "--no-export"]  # fmt: skip
    processes = []
    for config in loopback_cluster(workers) if workers > 1 else [None]:
        if config is not None:
            env["TF_CONFIG"] = json.dumps(config)
        processes.append(subprocess.Popen(
            command, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ))  # fmt: skip
    outputs = [p.communicate()[0] for p in processes]
    if any(p.returncode for p in processes):
        raise SystemExit("a worker failed:\n" + "\n\n".join(o[-3000:] for o in outputs))
    return outputs[0]


def step_ms(output: str) -> list[float]:
    """Keras's per-epoch ``ms/step`` (or ``s/step``) figures, in milliseconds."""
    figures = []
    for value, unit in re.findall(r" - (\d+(?:\.\d+)?)(ms|s)/step", output):
        figures.append(float(value) * (1000.0 if unit == "s" else 1.0))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--val-tasks", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tfds-dir", default=None, help="fit's --tfds-dir")
    args = parser.parse_args()
    options = [
        "--preset", args.preset, "--epochs", str(args.epochs), "--steps-per-epoch",
        str(args.steps_per_epoch), "--val-tasks", str(args.val_tasks), "--seed", str(args.seed),
        "--max-minutes", "0", *(["--tfds-dir", args.tfds_dir] if args.tfds_dir else []),
    ]  # fmt: skip
    print_machine()
    with tempfile.TemporaryDirectory() as root:
        results = {}
        for workers in (1, 2):
            run_dir = Path(root) / f"workers{workers}"
            output = run_fit(options, run_dir, workers)
            with (run_dir / "log.csv").open() as f:
                rows = list(csv.DictReader(f))
            results[workers] = (rows, step_ms(output))
    print(f"\n{args.preset}, {args.epochs} epochs x {args.steps_per_epoch} steps, seed {args.seed}, "
          "the same global batch")
    print("epoch | loss, 1 worker | loss, 2 workers | one-shot val, 1 worker | one-shot val, 2 workers")
    for epoch, (one, two) in enumerate(zip(results[1][0], results[2][0])):
        print(f"{epoch + 1:5d} | {float(one['loss']):14.4f} | {float(two['loss']):15.4f} | "
              f"{float(one['val_one_shot_accuracy']):22.1%} | {float(two['val_one_shot_accuracy']):23.1%}")
    one_ms = statistics.median(results[1][1][1:] or results[1][1])
    two_ms = statistics.median(results[2][1][1:] or results[2][1])
    print(f"median step: 1 worker {one_ms:.0f} ms, 2 workers {two_ms:.0f} ms; "
          f"2 workers / 1 worker: {two_ms / one_ms:.2f}x")


if __name__ == "__main__":
    main()
