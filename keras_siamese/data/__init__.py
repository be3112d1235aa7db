"""Data for one-shot learning: Omniglot and its split, Lake's runs, MNIST.

* `omniglot`: the Omniglot zips, validated by content, and the TFDS builder `koch_omniglot`;
* `split`: Koch et al.'s train/validation/test split (`paper_split`);
* `lake_runs`: Lake et al.'s 20 official one-shot runs (`load_lake_runs`);
* `mnist`: the MNIST test digits for the paper's transfer experiment;
* `folder`: a user's own folder of image classes (`read_image_folder`) and its class split.

The names a user needs are importable from here: `from keras_siamese import data;
data.paper_split(data.load_omniglot())`.
"""

from keras_siamese.data.folder import (
    CACHE_DIR_ENV, ImageFolder, ImageFolderError, apply_split, read_image_folder, read_split,
    split_classes, write_split,
)
from keras_siamese.data.lake_runs import NUM_RUNS, RUN_WAYS, LakeRuns, load_lake_runs
from keras_siamese.data.mnist import MNIST_DIR_ENV, MnistDataError, load_mnist_test
from keras_siamese.data.omniglot import (
    DATA_DIR_ENV, IMAGE_SHAPE, NUM_DRAWERS, OFFICIAL_URLS, KochOmniglot, OmniglotDataError,
    OmniglotImages, find_data_dir, load_omniglot,
)
from keras_siamese.data.split import (
    LAKE_TEST_ALPHABETS, TEST_DRAWERS, TRAIN_DRAWERS, VALIDATION_ALPHABETS, VALIDATION_DRAWERS,
    find_lake_alphabets, paper_split,
)

__all__ = [
    "CACHE_DIR_ENV", "DATA_DIR_ENV", "IMAGE_SHAPE", "LAKE_TEST_ALPHABETS", "MNIST_DIR_ENV",
    "NUM_DRAWERS", "NUM_RUNS", "OFFICIAL_URLS", "RUN_WAYS", "TEST_DRAWERS", "TRAIN_DRAWERS",
    "VALIDATION_ALPHABETS", "VALIDATION_DRAWERS", "ImageFolder", "ImageFolderError",
    "KochOmniglot", "LakeRuns", "MnistDataError", "OmniglotDataError", "OmniglotImages",
    "apply_split", "find_data_dir", "find_lake_alphabets", "load_lake_runs", "load_mnist_test",
    "load_omniglot", "paper_split", "read_image_folder", "read_split", "split_classes",
    "write_split",
]
