"""Peak memory of the default training run.

    python bench/memory.py [--preset cpu] [--steps 50]

Runs ``python -m keras_siamese.fit`` with the preset (one short epoch, no export) in a child
process and prints its peak resident memory, beside a baseline child that only imports
TensorFlow and loads Omniglot. Memory does not grow with the number of steps (pairs are drawn
in the graph; images are held once), so a short epoch gives the figure of a full run; a full
run records its own in ``metrics.json`` (``peak_memory_mib``).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile

BASELINE = "from keras_siamese import data; data.paper_split(data.load_omniglot())"


def child_peak_mib(args: list[str]) -> float:
    """Runs ``python ARGS`` and returns its peak resident memory in MiB."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # RUSAGE_CHILDREN holds the largest child so far: run the bigger child last.
    return max(after, before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    baseline = child_peak_mib(["-c", BASELINE])
    with tempfile.TemporaryDirectory() as tmp:
        training = child_peak_mib([
            "-m", "keras_siamese.fit", "--preset", args.preset, "--epochs", "1",
            "--steps-per-epoch", str(args.steps), "--runs-dir", tmp, "--no-export",
        ])
    from common import print_machine  # after the children: they are what is measured

    print_machine()
    print(f"import TensorFlow + load Omniglot      {baseline:8.0f} MiB")
    print(f"training run, preset {args.preset:<12}      {training:8.0f} MiB peak "
          f"({training / 1024:.2f} GiB; limit 4 GiB)")
    print(f"ratio                                  {training / baseline:8.2f}x")


if __name__ == "__main__":
    main()
