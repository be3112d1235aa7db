"""One worker of a distributed test run: ``training.train`` as ``fit`` configures it.

``python tests/end_to_end/distributed_worker.py OUT STRATEGY [fit options...]`` creates the
strategy (``multi-worker`` reads ``TF_CONFIG``), resolves the configuration with ``fit``'s own
parser, trains with ``training.train`` in ``OUT/run``, and writes what the tests compare into
``OUT`` (outside the run folder): ``worker{i}.npz``, the weights as training left them, and
``worker{i}.json``, the loss of every step and the per-epoch logs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out: Path, strategy: str, options: list[str]) -> None:
    from keras_siamese import distribute

    distribution = distribute.make_strategy(strategy)

    import keras
    import numpy as np

    from keras_siamese import fit, reporting, training

    args = fit.build_parser().parse_args([*options, "--run-dir", str(out / "run")])
    config, run_dir = fit.resolve_config(args)
    splits, _ = reporting.load_data(args.data_dir, args.tfds_dir, config.train_drawers)
    record: dict = {"steps": [], "epochs": []}

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            record["steps"].append(float(logs["loss"]))

        def on_epoch_end(self, epoch, logs=None):
            record["epochs"].append({key: float(value) for key, value in logs.items()})

        def on_train_end(self, logs=None):
            np.savez(out / f"worker{distribution.worker}.npz", *self.model.get_weights())

    training.train(
        config, splits, run_dir, verbose=0, extra_callbacks=[Record()], distribution=distribution
    )
    (out / f"worker{distribution.worker}.json").write_text(json.dumps(record))
    distribution.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
