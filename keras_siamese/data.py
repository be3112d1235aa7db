"""Omniglot for Koch et al. (2015): a TFDS builder, the paper's split and Lake's one-shot runs.

Omniglot (Lake, Salakhutdinov & Tenenbaum, 2015) holds 1,623 handwritten characters from 50
alphabets, each drawn once by 20 different people ("drawers"). It ships as two zips of 105x105
1-bit PNGs: `images_background.zip` (30 alphabets) and `images_evaluation.zip` (20 alphabets),
plus `all_runs.zip`, the 20 official 20-way one-shot classification runs.

This module:

* reads the zips directly (no extraction) into a TFDS dataset, `koch_omniglot`, that keeps the
  drawer of every image, which the stock `omniglot` builder drops but Koch et al.'s split needs;
* validates every zip by content before using it, because the local copies of the two large zips
  were repackaged and cannot be checked against the official checksums;
* loads both splits into memory (`load_omniglot`) and cuts them into the paper's
  train/validation/test split (`paper_split`);
* loads Lake's 20 runs (`load_lake_runs`).

All images come out as `uint8` arrays of shape `(105, 105, 1)` with 255 = white background and
0 = ink, the polarity of the PNG files.

Run `python -m keras_siamese.data [--data-dir DIR]` to recompute which evaluation alphabets Lake's
runs are drawn from and rewrite `lake_alphabets.json`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import io
import itertools
import json
import os
import pathlib
import re
import zipfile
import zlib
from typing import Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

OFFICIAL_URLS: dict[str, str] = {
    "images_background": (
        "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip"
    ),
    "images_evaluation": (
        "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip"
    ),
    "all_runs": (
        "https://github.com/brendenlake/omniglot/raw/master/python/"
        "one-shot-classification/all_runs.zip"
    ),
}
DATA_DIR_ENV = "KERAS_SIAMESE_DATA_DIR"

IMAGE_SHAPE = (105, 105, 1)
NUM_DRAWERS = 20
NUM_RUNS = 20
RUN_WAYS = 20

# Koch et al. (2015), section 4: drawers 1-12 train, 13-16 validate, 17-20 test.
TRAIN_DRAWERS = tuple(range(1, 13))
VALIDATION_DRAWERS = tuple(range(13, 17))
TEST_DRAWERS = tuple(range(17, 21))

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
_SHARED_DATA = pathlib.Path("..", "shared", "data", "omniglot")
_ALPHABETS_FILE = pathlib.Path(__file__).with_name("lake_alphabets.json")


class OmniglotDataError(ValueError):
    """Omniglot files are missing, unreadable, or not laid out as expected."""


# ---------------------------------------------------------------------------------------------
# Locating the zips
# ---------------------------------------------------------------------------------------------


def find_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path | None:
    """Returns the folder holding the Omniglot zips, or None if no local copy is known.

    The folder is looked up in this order:

    1. `data_dir`, if given (it must exist);
    2. the environment variable `KERAS_SIAMESE_DATA_DIR`, if set (it must exist);
    3. `../shared/data/omniglot` beside the repository root, then beside the working directory.

    Args:
        data_dir: explicit folder holding `images_background.zip`, `images_evaluation.zip` and
            `all_runs.zip`.

    Returns:
        The resolved folder, or None, which callers take as "download from `OFFICIAL_URLS`".

    Raises:
        OmniglotDataError: an explicitly named folder (argument or environment) does not exist.
    """
    if data_dir is not None:
        return _existing_dir(pathlib.Path(data_dir), "data_dir")
    if os.environ.get(DATA_DIR_ENV):
        return _existing_dir(pathlib.Path(os.environ[DATA_DIR_ENV]), f"${DATA_DIR_ENV}")
    return _beside_checkout(_SHARED_DATA)


def _beside_checkout(relative: pathlib.Path) -> pathlib.Path | None:
    """`relative` under the repository root, else under the working directory, if it exists."""
    for base in (_REPO_ROOT, pathlib.Path.cwd()):
        candidate = base / relative
        if candidate.is_dir():
            return candidate.resolve()
    return None


def _existing_dir(path: pathlib.Path, source: str) -> pathlib.Path:
    if not path.is_dir():
        raise OmniglotDataError(
            f"{path}: Omniglot folder given by {source} does not exist; expected a folder "
            "holding images_background.zip, images_evaluation.zip and all_runs.zip."
        )
    return path.resolve()


def _local_or_downloaded_zip(name: str, data_dir: str | os.PathLike | None) -> pathlib.Path:
    """Returns `<data folder>/<name>.zip`, downloading the official zip if there is none."""
    folder = find_data_dir(data_dir)
    if folder is not None and (folder / f"{name}.zip").is_file():
        return folder / f"{name}.zip"
    # Imported here because Keras is only needed for this fallback.
    import keras

    try:
        path = keras.utils.get_file(
            fname=f"{name}.zip", origin=OFFICIAL_URLS[name], cache_subdir="omniglot"
        )
    except Exception as error:  # get_file raises a bare Exception for a failed download
        where = f"not in {folder}" if folder is not None else "no Omniglot folder found"
        raise OmniglotDataError(
            f"{name}.zip: {where}, and downloading {OFFICIAL_URLS[name]} failed ({error}); "
            f"name a folder holding it with --data-dir or ${DATA_DIR_ENV}."
        ) from error
    return pathlib.Path(path)


# ---------------------------------------------------------------------------------------------
# Reading and validating zips
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _zip_errors(path: os.PathLike | str) -> Iterator[None]:
    """Turns the many ways a damaged zip fails into one OmniglotDataError naming the file."""
    try:
        yield
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise OmniglotDataError(
            f"{path}: not a readable zip archive ({error}); expected an intact Omniglot zip, "
            "copy or download it again."
        ) from error


def _open_zip(path: os.PathLike | str) -> zipfile.ZipFile:
    if not os.path.isfile(path):
        raise OmniglotDataError(f"{path}: file not found; expected an Omniglot zip there.")
    with _zip_errors(path):
        return zipfile.ZipFile(path)


def _decode_png(data: bytes, path: os.PathLike | str, member: str) -> np.ndarray:
    """Decodes one 1-bit PNG member to uint8 (105, 105, 1), 255 = background, 0 = ink."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format, size, mode = image.format, image.size, image.mode
            # "L" maps 1-bit pixels to 0/255 and keeps the file's polarity.
            pixels = np.asarray(image.convert("L"))
    except (OSError, SyntaxError) as error:  # PIL's errors for unreadable or truncated images
        raise OmniglotDataError(
            f"{path}: member {member} is not a decodable PNG ({error})."
        ) from error
    # Every Omniglot file, runs included, is a 1-bit PNG. Insisting on it lets KochOmniglot
    # store the files unchanged: TensorFlow's PNG decoder, which TFDS uses, expands 1-bit
    # pixels to exactly these 0/255 values.
    if (image_format, size, mode) != ("PNG", IMAGE_SHAPE[:2], "1"):
        raise OmniglotDataError(
            f"{path}: member {member} is a {size[0]}x{size[1]} {image_format} image in PIL "
            f"mode {mode!r}; expected a 105x105 1-bit PNG (mode '1')."
        )
    return pixels[..., np.newaxis]


def _check_background_is_white(images: np.ndarray, path: os.PathLike | str) -> None:
    # Strokes cover a small fraction of every character, so mostly-black images mean the
    # polarity is inverted; catching it here keeps every loader returning 255 = background.
    if images.size and np.mean(images == 0) > 0.5:
        raise OmniglotDataError(
            f"{path}: images are mostly black; expected white (255) background with black ink."
        )


@dataclasses.dataclass(frozen=True)
class _SplitSpec:
    """What one of the two full Omniglot zips must contain."""

    root: str  # top folder inside the zip, also the zip's name without ".zip"
    num_alphabets: int
    num_characters: int

    @property
    def num_images(self) -> int:
        return self.num_characters * NUM_DRAWERS


_SPLITS: dict[str, _SplitSpec] = {
    "background": _SplitSpec("images_background", num_alphabets=30, num_characters=964),
    "evaluation": _SplitSpec("images_evaluation", num_alphabets=20, num_characters=659),
}

# <Alphabet>/characterNN/NNNN_DD.png below the zip's root folder.
_MEMBER = re.compile(
    r"(?P<alphabet>[^/]+)/character(?P<folder>\d\d)/(?P<character>\d{4})_(?P<drawer>\d\d)\.png"
)


@dataclasses.dataclass(frozen=True, eq=False)
class OmniglotImages:
    """One Omniglot split in memory; row i of every array describes the same image.

    Attributes:
        images: uint8 `(N, 105, 105, 1)`, 255 = white background, 0 = ink.
        alphabet: str `(N,)`, alphabet (folder) name, e.g. `"Latin"`.
        character: int32 `(N,)`, global character id 1..1623 (the `NNNN` of `NNNN_DD.png`).
        drawer: int32 `(N,)`, the person who drew the image, 1..20 (the `DD`).
    """

    images: np.ndarray
    alphabet: np.ndarray
    character: np.ndarray
    drawer: np.ndarray

    def __post_init__(self):
        lengths = {len(self.images), len(self.alphabet), len(self.character), len(self.drawer)}
        if len(lengths) != 1:
            raise ValueError(f"OmniglotImages arrays differ in length: {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.images)

    def select(self, mask: np.ndarray | Sequence[bool]) -> OmniglotImages:
        """Returns the images where the boolean `mask` (one entry per image) is True."""
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != (len(self),):
            raise ValueError(
                f"select() expects a boolean mask of shape ({len(self)},), "
                f"got {mask.dtype} {mask.shape}"
            )
        return OmniglotImages(
            images=self.images[mask],
            alphabet=self.alphabet[mask],
            character=self.character[mask],
            drawer=self.drawer[mask],
        )


def _read_split_zip(
    path: os.PathLike | str, spec: _SplitSpec
) -> tuple[OmniglotImages, list[bytes]]:
    """Reads and fully validates one of the two full zips.

    Checks run cheapest first, so a wrong zip fails before anything is decoded: member names,
    then counts, then every PNG.

    Returns:
        The decoded split and the PNG file contents, both sorted by (character, drawer).
    """
    with _open_zip(path) as archive, _zip_errors(path):
        members = [info.filename for info in archive.infolist() if not info.is_dir()]

        parsed, misplaced = [], []
        for name in members:
            root, _, rest = name.partition("/")
            match = _MEMBER.fullmatch(rest) if root == spec.root else None
            if match is None:
                misplaced.append(name)
            else:
                parsed.append(match)
        if misplaced:
            raise OmniglotDataError(
                f"{path}: {len(misplaced)} of {len(members)} members do not follow the layout "
                f"{spec.root}/<Alphabet>/characterNN/NNNN_DD.png, e.g. {misplaced[:3]}."
            )

        folders = collections.defaultdict(list)  # (alphabet, characterNN) -> [(id, drawer)]
        for match in parsed:
            folders[match["alphabet"], match["folder"]].append(
                (int(match["character"]), int(match["drawer"]))
            )
        num_alphabets = len({alphabet for alphabet, _ in folders})
        if (num_alphabets, len(folders), len(members)) != (
            spec.num_alphabets,
            spec.num_characters,
            spec.num_images,
        ):
            raise OmniglotDataError(
                f"{path}: found {num_alphabets} alphabets, {len(folders)} characters and "
                f"{len(members)} images; expected {spec.num_alphabets} alphabets, "
                f"{spec.num_characters} characters and {spec.num_images} images "
                f"({NUM_DRAWERS} drawers per character)."
            )
        folder_of_id = {}
        for (alphabet, folder), entries in folders.items():
            ids = {character for character, _ in entries}
            drawers = sorted(drawer for _, drawer in entries)
            where = f"{spec.root}/{alphabet}/character{folder}"
            if len(ids) != 1 or drawers != list(range(1, NUM_DRAWERS + 1)):
                raise OmniglotDataError(
                    f"{path}: {where} holds ids {sorted(ids)} and drawers {drawers}; expected "
                    f"one id NNNN in NNNN_01.png ... NNNN_{NUM_DRAWERS}.png."
                )
            (character,) = ids
            if character in folder_of_id:
                raise OmniglotDataError(
                    f"{path}: character id {character:04d} appears in both "
                    f"{folder_of_id[character]} and {where}; expected unique ids."
                )
            folder_of_id[character] = where

        # Archive order reads the file sequentially; sorting happens afterwards.
        pngs = [archive.read(name) for name in members]

    images = np.stack([_decode_png(png, path, name) for png, name in zip(pngs, members)])
    _check_background_is_white(images, path)
    character = np.array([int(match["character"]) for match in parsed], dtype=np.int32)
    drawer = np.array([int(match["drawer"]) for match in parsed], dtype=np.int32)
    order = np.lexsort((drawer, character))
    split = OmniglotImages(
        images=images[order],
        alphabet=np.array([match["alphabet"] for match in parsed], dtype=str)[order],
        character=character[order],
        drawer=drawer[order],
    )
    return split, [pngs[i] for i in order]


# ---------------------------------------------------------------------------------------------
# The TFDS builder
# ---------------------------------------------------------------------------------------------

_CITATION = """\
@article{lake2015human,
  title={Human-level concept learning through probabilistic program induction},
  author={Lake, Brenden M. and Salakhutdinov, Ruslan and Tenenbaum, Joshua B.},
  journal={Science},
  volume={350},
  number={6266},
  pages={1332--1338},
  year={2015}
}"""


# When this file runs as `python -m keras_siamese.data`, it is also importable as
# `keras_siamese.data`; registering the `__main__` copy too would make TFDS reject the second
# registration of the same name.
class KochOmniglot(tfds.core.GeneratorBasedBuilder, skip_registration=__name__ == "__main__"):
    """Omniglot with drawer ids, read and validated straight from the original zips."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Background and evaluation splits with alphabet, character, drawer."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Optional. Place images_background.zip and images_evaluation.zip from
    https://github.com/brendenlake/omniglot/tree/master/python in the manual folder
    (`tfds.download.DownloadConfig(manual_dir=...)`). Zips missing there are downloaded.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Omniglot's 32,460 handwritten characters (105x105, white background) with "
                "alphabet, global character id (1..1623) and drawer (1..20), as needed by the "
                "drawer-based split of Koch et al. (2015)."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=IMAGE_SHAPE),
                    "alphabet": tfds.features.Text(),
                    "character": np.int32,
                    "drawer": np.int32,
                }
            ),
            homepage="https://github.com/brendenlake/omniglot",
            citation=_CITATION,
            # Keep the (character, drawer) order of the generator in the prepared files.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        return {
            split: self._generate_examples(self._zip_path(dl_manager, spec.root), spec)
            for split, spec in _SPLITS.items()
        }

    @staticmethod
    def _zip_path(dl_manager: tfds.download.DownloadManager, name: str) -> os.PathLike:
        try:
            manual = dl_manager.manual_dir / f"{name}.zip"
        except AssertionError:  # TFDS's way of saying the manual folder is missing or empty
            manual = None
        if manual is not None and manual.exists():
            return manual
        # No checksum is registered: the zips are verified by content in _read_split_zip.
        return dl_manager.download(OFFICIAL_URLS[name])

    def _generate_examples(self, path: os.PathLike, spec: _SplitSpec):
        # Everything is validated before the first example is yielded, so a bad zip never
        # leaves a partly written split behind.
        split, pngs = _read_split_zip(path, spec)
        for i in range(len(split)):
            key = f"{split.character[i]:04d}_{split.drawer[i]:02d}"
            yield key, {
                # The validated 1-bit PNG is stored as is: re-encoding the decoded pixels gives
                # the same pixels but made preparing 2.5x slower (30 s instead of 12 s).
                "image": pngs[i],
                "alphabet": split.alphabet[i],
                "character": split.character[i],
                "drawer": split.drawer[i],
            }


def load_omniglot(
    data_dir: str | os.PathLike | None = None,
    tfds_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> dict[str, OmniglotImages]:
    """Prepares `koch_omniglot` once, then loads both splits into memory.

    Args:
        data_dir: folder holding the zips, resolved by `find_data_dir`; used as TFDS's manual
            folder. Zips not found locally are downloaded from `OFFICIAL_URLS`.
        tfds_dir: where TFDS keeps the prepared dataset (default `~/tensorflow_datasets`).
        download: whether zips may be downloaded when the dataset still has to be prepared.

    Returns:
        `{"background": ..., "evaluation": ...}`, each sorted by (character, drawer).

    Raises:
        OmniglotDataError: the data folder is missing, a needed zip is missing and `download`
            is False, or a zip fails validation.
    """
    folder = find_data_dir(data_dir)
    builder = KochOmniglot(data_dir=None if tfds_dir is None else os.fspath(tfds_dir))
    if not builder.is_prepared():
        if not download:
            missing = [
                f"{spec.root}.zip"
                for spec in _SPLITS.values()
                if folder is None or not (folder / f"{spec.root}.zip").is_file()
            ]
            if missing:
                raise OmniglotDataError(
                    f"{folder or 'no local Omniglot folder'}: missing {missing} and "
                    f"download=False; pass data_dir or set ${DATA_DIR_ENV}."
                )
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=None if folder is None else os.fspath(folder)
            )
        )
    return {split: _load_split(builder, split) for split in _SPLITS}


def _load_split(builder: tfds.core.DatasetBuilder, split: str) -> OmniglotImages:
    # batch_size=-1 yields the whole split as one batch of arrays instead of 19,280 examples.
    batch = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    return OmniglotImages(
        images=batch["image"],
        alphabet=np.char.decode(batch["alphabet"].astype(bytes), "utf-8"),
        character=batch["character"].astype(np.int32),
        drawer=batch["drawer"].astype(np.int32),
    )


# ---------------------------------------------------------------------------------------------
# The paper's split
# ---------------------------------------------------------------------------------------------


def _read_alphabet_file() -> tuple[tuple[str, ...], tuple[str, ...]]:
    content = json.loads(_ALPHABETS_FILE.read_text(encoding="utf-8"))
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
            f"(from {_ALPHABETS_FILE.name})."
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


# ---------------------------------------------------------------------------------------------
# Lake's 20 one-shot runs
# ---------------------------------------------------------------------------------------------


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


def _run_member(run: int, kind: str, index: int) -> str:
    """Name inside all_runs.zip; run and index count from 0, file names from 1."""
    stem = "class" if kind == "training" else "item"
    return f"run{run + 1:02d}/{kind}/{stem}{index + 1:02d}.png"


def _read_runs_zip(path: os.PathLike | str) -> LakeRuns:
    """Reads and validates all_runs.zip."""
    labels = {run: f"run{run + 1:02d}/class_labels.txt" for run in range(NUM_RUNS)}
    images = {
        _run_member(run, kind, index): (kind, run, index)
        for run in range(NUM_RUNS)
        for kind in ("training", "test")
        for index in range(RUN_WAYS)
    }
    with _open_zip(path) as archive, _zip_errors(path):
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
            arrays[kind][run, index] = _decode_png(files[kind][run, index], path, member)

    for array in arrays.values():
        _check_background_is_white(array, path)
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
    query_of = {_run_member(run, "test", q): q for q in range(RUN_WAYS)}
    candidate_of = {_run_member(run, "training", k): k for k in range(RUN_WAYS)}
    answers = {}
    for line in text.decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or fields[0] not in query_of or fields[1] not in candidate_of:
            raise OmniglotDataError(
                f"{path}: {member} has the line {line!r}; expected "
                f"'{_run_member(run, 'test', 0)} {_run_member(run, 'training', 0)}'-style pairs."
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
    return _read_runs_zip(_local_or_downloaded_zip("all_runs", data_dir))


# ---------------------------------------------------------------------------------------------
# MNIST, for the paper's transfer experiment
# ---------------------------------------------------------------------------------------------

MNIST_DIR_ENV = "KERAS_SIAMESE_MNIST_DIR"
_SHARED_MNIST = pathlib.Path("..", "shared", "data", "mnist")
_MNIST_FILES = {"images": ("t10k-images-idx3-ubyte.gz", 2051), "labels": ("t10k-labels-idx1-ubyte.gz", 2049)}


class MnistDataError(ValueError):
    """The MNIST files are missing, unreadable, or not in the IDX format."""


def _read_idx(path: pathlib.Path, magic: int) -> np.ndarray:
    """One gzipped IDX file (the format MNIST is published in) as a uint8 array."""
    import gzip

    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as error:
        raise MnistDataError(f"{path}: not a readable gzip file ({error}).") from error
    header = 4 * (1 + (magic & 0xFF))  # the magic number, then one int32 per dimension
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise MnistDataError(f"{path}: not an IDX file with magic number {magic}.")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(magic & 0xFF)]
    if len(raw) != header + int(np.prod(dims)):
        raise MnistDataError(f"{path}: {len(raw) - header} data bytes; the header says {dims}.")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def load_mnist_test(mnist_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 MNIST test digits, in Omniglot's polarity, and their labels.

    The files (`t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`) are read from
    `mnist_dir`, else `$KERAS_SIAMESE_MNIST_DIR`, else `../shared/data/mnist` beside the
    repository or the working directory; without a local copy `keras.datasets.mnist` downloads
    the set.

    Returns:
        uint8 images `(10000, 28, 28, 1)` with 255 = background (MNIST's white-on-black
        inverted, so the network sees ink as it does on Omniglot) and int64 labels `(10000,)`.

    Raises:
        MnistDataError: a named folder or a file is missing or malformed, or with no
            local copy, the download failed.
    """
    if mnist_dir is not None or os.environ.get(MNIST_DIR_ENV):
        folder = pathlib.Path(mnist_dir if mnist_dir is not None else os.environ[MNIST_DIR_ENV])
        if not folder.is_dir():
            raise MnistDataError(f"{folder}: MNIST folder not found.")
    else:
        folder = _beside_checkout(_SHARED_MNIST)
    if folder is None:
        import keras

        try:
            _, (images, labels) = keras.datasets.mnist.load_data()
        except Exception as error:  # get_file raises a bare Exception for a failed download
            raise MnistDataError(
                f"no local MNIST test set (${MNIST_DIR_ENV} or {_SHARED_MNIST} beside the "
                f"checkout), and downloading it failed ({error})."
            ) from error
    else:
        arrays = {}
        for key, (name, magic) in _MNIST_FILES.items():
            path = folder / name
            if not path.is_file():
                raise MnistDataError(f"{path}: file not found; expected the MNIST test set there.")
            arrays[key] = _read_idx(path, magic)
        images, labels = arrays["images"], arrays["labels"]
        if images.shape[1:] != (28, 28) or len(images) != len(labels) or labels.max() > 9:
            raise MnistDataError(
                f"{folder}: {images.shape} images and {labels.shape} labels; expected "
                "(N, 28, 28) digits with one label 0-9 each."
            )
    return (255 - images)[..., np.newaxis], labels.astype(np.int64)


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
    runs_path = _local_or_downloaded_zip("all_runs", data_dir)
    evaluation_path = _local_or_downloaded_zip("images_evaluation", data_dir)
    runs = _read_runs_zip(runs_path)
    evaluation, _ = _read_split_zip(evaluation_path, _SPLITS["evaluation"])

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
            unmatched.append(_run_member(run, kind, index))
    if unmatched:
        raise OmniglotDataError(
            f"{runs_path}: {len(unmatched)} run images match no image of {evaluation_path} "
            f"pixel for pixel, e.g. {unmatched[:3]}."
        )
    return sorted(found)


def _write_alphabet_file(data_dir: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """Recomputes the test/validation alphabets and rewrites lake_alphabets.json."""
    lake = find_lake_alphabets(data_dir)
    evaluation_path = _local_or_downloaded_zip("images_evaluation", data_dir)
    with _open_zip(evaluation_path) as archive, _zip_errors(evaluation_path):
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
    _ALPHABETS_FILE.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    return content


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="Recompute which evaluation alphabets Lake's one-shot runs use and rewrite "
        f"{_ALPHABETS_FILE.name}."
    )
    parser.add_argument("--data-dir", help="folder holding the Omniglot zips")
    arguments = parser.parse_args()
    result = _write_alphabet_file(arguments.data_dir)
    print(f"wrote {_ALPHABETS_FILE}")
    print("test (Lake's runs):", ", ".join(result["lake_test_alphabets"]))
    print("validation:       ", ", ".join(result["validation_alphabets"]))
