"""Lake et al.'s 20 official 20-way one-shot runs (`all_runs.zip`), the standard benchmark.

Its 800 images come from Omniglot's evaluation alphabets, which `keras_siamese.data.split` keeps
out of training and model selection.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from keras_siamese.data.omniglot import (
    IMAGE_SHAPE, OmniglotDataError, check_background_is_white, decode_png,
    local_or_downloaded_zip, open_zip, zip_errors,
)

NUM_RUNS = 20
RUN_WAYS = 20


@dataclasses.dataclass(frozen=True, eq=False)
class LakeRuns:
    """Lake et al.'s 20 official 20-way one-shot classification runs.

    Attributes:
        training: uint8 `(20, 20, 105, 105, 1)`: run r, candidate k (`class01..class20`).
        test: uint8 `(20, 20, 105, 105, 1)`: run r, query q (`item01..item20`).
        answers: int32 `(20, 20)`: for run r and query q, the index k of the candidate of the
            same character (from `class_labels.txt`).
        training_files, test_files: object `(20, 20)`: the PNG files' bytes as stored in the
            zip, for clients that send files (TF Serving's encoded-image signatures).
    """

    training: np.ndarray
    test: np.ndarray
    answers: np.ndarray
    training_files: np.ndarray
    test_files: np.ndarray


def run_member(run: int, kind: str, index: int) -> str:
    """Name inside all_runs.zip; run and index count from 0, file names from 1."""
    stem = "class" if kind == "training" else "item"
    return f"run{run + 1:02d}/{kind}/{stem}{index + 1:02d}.png"


def read_runs_zip(path: os.PathLike | str) -> LakeRuns:
    """Reads and validates all_runs.zip."""
    labels = {run: f"run{run + 1:02d}/class_labels.txt" for run in range(NUM_RUNS)}
    images = {
        run_member(run, kind, index): (kind, run, index)
        for run in range(NUM_RUNS)
        for kind in ("training", "test")
        for index in range(RUN_WAYS)
    }
    with open_zip(path) as archive, zip_errors(path):
        members = {info.filename for info in archive.infolist() if not info.is_dir()}
        expected = set(labels.values()) | set(images)
        if members != expected:
            raise OmniglotDataError(
                f"{path}: expected runNN/class_labels.txt, runNN/training/classKK.png and "
                f"runNN/test/itemQQ.png for NN, KK, QQ in 01..20 ({len(expected)} files); "
                f"missing {sorted(expected - members)[:3]}, "
                f"unexpected {sorted(members - expected)[:3]}."
            )

        answers = np.zeros((NUM_RUNS, RUN_WAYS), dtype=np.int32)
        for run, member in labels.items():
            answers[run] = _parse_class_labels(archive.read(member), run, path, member)

        arrays = {
            kind: np.zeros((NUM_RUNS, RUN_WAYS, *IMAGE_SHAPE), dtype=np.uint8)
            for kind in ("training", "test")
        }
        files = {kind: np.empty((NUM_RUNS, RUN_WAYS), dtype=object) for kind in arrays}
        for member, (kind, run, index) in images.items():
            files[kind][run, index] = archive.read(member)
            arrays[kind][run, index] = decode_png(files[kind][run, index], path, member)

    for array in arrays.values():
        check_background_is_white(array, path)
    return LakeRuns(
        training=arrays["training"],
        test=arrays["test"],
        answers=answers,
        training_files=files["training"],
        test_files=files["test"],
    )


def _parse_class_labels(
    text: bytes, run: int, path: os.PathLike | str, member: str
) -> np.ndarray:
    """Parses `runNN/test/itemQQ.png runNN/training/classKK.png` lines into answers[q] = k."""
    query_of = {run_member(run, "test", q): q for q in range(RUN_WAYS)}
    candidate_of = {run_member(run, "training", k): k for k in range(RUN_WAYS)}
    answers = {}
    for line in text.decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or fields[0] not in query_of or fields[1] not in candidate_of:
            raise OmniglotDataError(
                f"{path}: {member} has the line {line!r}; expected "
                f"'{run_member(run, 'test', 0)} {run_member(run, 'training', 0)}'-style pairs."
            )
        answers[query_of[fields[0]]] = candidate_of[fields[1]]
    if sorted(answers) != list(range(RUN_WAYS)):
        raise OmniglotDataError(
            f"{path}: {member} answers {len(answers)} distinct queries; expected each of "
            f"the {RUN_WAYS} test items once."
        )
    return np.array([answers[q] for q in range(RUN_WAYS)], dtype=np.int32)


def load_lake_runs(data_dir: str | os.PathLike | None = None) -> LakeRuns:
    """Loads Lake et al.'s 20 one-shot runs from `all_runs.zip`.

    Args:
        data_dir: folder holding `all_runs.zip`, resolved by `find_data_dir`; without a local
            copy the official zip is downloaded (and cached by Keras).

    Returns:
        The runs, images with the same polarity as `load_omniglot` (255 = background).

    Raises:
        OmniglotDataError: the folder is missing or the zip fails validation.
    """
    return read_runs_zip(local_or_downloaded_zip("all_runs", data_dir))
