"""Tests for keras_siamese.data.split: the paper's split of the real Omniglot."""

from __future__ import annotations

import numpy as np
import pytest

from keras_siamese import data

# --- The paper's split ---------------------------------------------------------------------


def test_paper_split_sizes(omniglot):
    splits = data.paper_split(omniglot)
    evaluation = omniglot["evaluation"]

    def num_characters(alphabets):
        return len(np.unique(evaluation.character[np.isin(evaluation.alphabet, alphabets)]))

    assert len(splits["train"]) == 964 * 12
    assert len(splits["validation"]) == num_characters(data.VALIDATION_ALPHABETS) * 4
    assert len(splits["test"]) == num_characters(data.LAKE_TEST_ALPHABETS) * 4
    assert (
        num_characters(data.VALIDATION_ALPHABETS) + num_characters(data.LAKE_TEST_ALPHABETS) == 659
    )
    assert set(splits["train"].drawer) == set(range(1, 13))
    assert set(splits["validation"].drawer) == set(range(13, 17))
    assert set(splits["test"].drawer) == set(range(17, 21))
    assert set(splits["train"].alphabet) == set(omniglot["background"].alphabet)


def test_paper_split_can_train_on_every_background_drawer(omniglot):
    paper, whole = data.paper_split(omniglot), data.paper_split(omniglot, train_drawers=20)
    assert len(whole["train"]) == len(omniglot["background"]) == 964 * 20
    assert set(whole["train"].drawer) == set(range(1, 21))
    # Only training changes: validation and test alphabets are not background alphabets.
    for name in ("validation", "test"):
        np.testing.assert_array_equal(whole[name].images, paper[name].images)
    assert not set(whole["train"].alphabet) & set(whole["validation"].alphabet)
    assert not set(whole["train"].alphabet) & set(whole["test"].alphabet)


@pytest.mark.parametrize("drawers", [0, 21])
def test_paper_split_rejects_a_drawer_count_out_of_range(omniglot, drawers):
    with pytest.raises(ValueError, match="train_drawers must be between 1 and 20"):
        data.paper_split(omniglot, train_drawers=drawers)


def test_paper_split_is_disjoint(omniglot):
    splits = data.paper_split(omniglot)
    alphabets = {name: set(split.alphabet) for name, split in splits.items()}
    drawers = {name: set(split.drawer) for name, split in splits.items()}
    assert alphabets["test"] == set(data.LAKE_TEST_ALPHABETS)
    assert alphabets["validation"] == set(data.VALIDATION_ALPHABETS)
    for a, b in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        assert not alphabets[a] & alphabets[b]
        assert not drawers[a] & drawers[b]


def test_lake_alphabets_file_matches_the_runs(omniglot_dir, omniglot):
    assert data.find_lake_alphabets(omniglot_dir) == list(data.LAKE_TEST_ALPHABETS)
    assert len(data.LAKE_TEST_ALPHABETS) == len(data.VALIDATION_ALPHABETS) == 10
    assert set(data.LAKE_TEST_ALPHABETS) | set(data.VALIDATION_ALPHABETS) == set(
        omniglot["evaluation"].alphabet
    )
