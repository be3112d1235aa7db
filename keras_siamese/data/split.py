"""Koch et al.'s (2015) split of Omniglot into training, validation and test sets.

The test alphabets are the 10 evaluation alphabets that Lake's 20 runs are drawn from, found by
matching every run image pixel for pixel against the evaluation set (`find_lake_alphabets`) and
stored in `lake_alphabets.json`, so loading needs no runs zip. `python -m keras_siamese.data`
recomputes that file.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import pathlib
from typing import Mapping

import numpy as np

from keras_siamese.data.lake_runs import NUM_RUNS, RUN_WAYS, read_runs_zip, run_member
from keras_siamese.data.omniglot import (
    NUM_DRAWERS, SPLITS, OmniglotDataError, OmniglotImages, local_or_downloaded_zip, open_zip,
    read_split_zip, zip_errors,
)

# Koch et al. (2015), section 4: drawers 1-12 train, 13-16 validate, 17-20 test.
TRAIN_DRAWERS = tuple(range(1, 13))
VALIDATION_DRAWERS = tuple(range(13, 17))
TEST_DRAWERS = tuple(range(17, 21))

ALPHABETS_FILE = pathlib.Path(__file__).with_name("lake_alphabets.json")


def _read_alphabet_file() -> tuple[tuple[str, ...], tuple[str, ...]]:
    content = json.loads(ALPHABETS_FILE.read_text(encoding="utf-8"))
    return tuple(content["lake_test_alphabets"]), tuple(content["validation_alphabets"])


# The 10 evaluation alphabets Lake's runs are drawn from (test) and the other 10 (validation),
# computed by find_lake_alphabets and stored with the code so loading needs no runs zip.
LAKE_TEST_ALPHABETS, VALIDATION_ALPHABETS = _read_alphabet_file()


def paper_split(
    data: Mapping[str, OmniglotImages], train_drawers: int = len(TRAIN_DRAWERS)
) -> dict[str, OmniglotImages]:
    """Cuts the two Omniglot splits into Koch et al.'s (2015) train/validation/test sets.

    * train: all 30 background alphabets, drawers 1-12 (1 to ``train_drawers``);
    * validation: the 10 evaluation alphabets not used by Lake's runs, drawers 13-16;
    * test: the 10 evaluation alphabets Lake's runs come from, drawers 17-20.

    Args:
        data: `{"background": ..., "evaluation": ...}` as returned by `load_omniglot`.
        train_drawers: train on drawers 1 to this of the background alphabets. The paper
            uses 12 and leaves the background alphabets' other 8 drawers unused; 20 trains
            on the whole background set, as Lake et al. do. Validation and test alphabets
            are never in the background set, so this changes neither.

    Returns:
        `{"train": ..., "validation": ..., "test": ...}`.

    Raises:
        OmniglotDataError: the evaluation alphabets are not the 20 expected ones.
    """
    background, evaluation = data["background"], data["evaluation"]
    expected = set(LAKE_TEST_ALPHABETS) | set(VALIDATION_ALPHABETS)
    found = set(evaluation.alphabet.tolist())
    if found != expected:
        raise OmniglotDataError(
            f"evaluation split: found alphabets {sorted(found)}; expected {sorted(expected)} "
            f"(from {ALPHABETS_FILE.name})."
        )
    if not 1 <= train_drawers <= NUM_DRAWERS:
        raise ValueError(f"train_drawers must be between 1 and {NUM_DRAWERS}, got {train_drawers}")
    return {
        "train": background.select(background.drawer <= train_drawers),
        "validation": evaluation.select(
            np.isin(evaluation.alphabet, VALIDATION_ALPHABETS)
            & np.isin(evaluation.drawer, VALIDATION_DRAWERS)
        ),
        "test": evaluation.select(
            np.isin(evaluation.alphabet, LAKE_TEST_ALPHABETS)
            & np.isin(evaluation.drawer, TEST_DRAWERS)
        ),
    }


def find_lake_alphabets(data_dir: str | os.PathLike | None = None) -> list[str]:
    """Finds the evaluation alphabets of Lake's runs by matching decoded pixels.

    The run PNGs were re-encoded, so their bytes differ from the evaluation PNGs; their pixels
    do not. Every run image is looked up among the decoded `images_evaluation.zip` images.

    Args:
        data_dir: folder holding `all_runs.zip` and `images_evaluation.zip` (see
            `find_data_dir`); missing zips are downloaded.

    Returns:
        The sorted names of the alphabets the run images belong to.

    Raises:
        OmniglotDataError: a zip fails validation, or a run image matches no evaluation image.
    """
    runs_path = local_or_downloaded_zip("all_runs", data_dir)
    evaluation_path = local_or_downloaded_zip("images_evaluation", data_dir)
    runs = read_runs_zip(runs_path)
    evaluation, _ = read_split_zip(evaluation_path, SPLITS["evaluation"])

    alphabets_of_pixels = collections.defaultdict(set)
    for image, alphabet in zip(evaluation.images, evaluation.alphabet):
        alphabets_of_pixels[image.tobytes()].add(str(alphabet))

    found, unmatched = set(), []
    for kind, run, index in itertools.product(
        ("training", "test"), range(NUM_RUNS), range(RUN_WAYS)
    ):
        pixels = getattr(runs, kind)[run, index].tobytes()
        if pixels in alphabets_of_pixels:
            found |= alphabets_of_pixels[pixels]
        else:
            unmatched.append(run_member(run, kind, index))
    if unmatched:
        raise OmniglotDataError(
            f"{runs_path}: {len(unmatched)} run images match no image of {evaluation_path} "
            f"pixel for pixel, e.g. {unmatched[:3]}."
        )
    return sorted(found)


def write_alphabet_file(data_dir: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """Recomputes the test/validation alphabets and rewrites lake_alphabets.json."""
    lake = find_lake_alphabets(data_dir)
    evaluation_path = local_or_downloaded_zip("images_evaluation", data_dir)
    with open_zip(evaluation_path) as archive, zip_errors(evaluation_path):
        every = {
            name.split("/")[1]
            for name in archive.namelist()
            if name.count("/") >= 2  # images_evaluation/<Alphabet>/...
        }
    content = {
        "description": (
            "Evaluation alphabets of Omniglot split for Koch et al. (2015): Lake et al.'s 20 "
            "one-shot runs (all_runs.zip) are drawn from lake_test_alphabets; the remaining "
            "evaluation alphabets are validation_alphabets. Generated by "
            "`python -m keras_siamese.data`, which matches every run image pixel for pixel "
            "to images_evaluation.zip."
        ),
        "lake_test_alphabets": lake,
        "validation_alphabets": sorted(every - set(lake)),
    }
    ALPHABETS_FILE.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    return content
