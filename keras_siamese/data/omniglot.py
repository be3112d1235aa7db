"""Omniglot's zips, read and validated by content, and the TFDS builder ``koch_omniglot``.

Omniglot (Lake, Salakhutdinov & Tenenbaum, 2015) holds 1,623 handwritten characters from 50
alphabets, each drawn once by 20 different people ("drawers"). It ships as two zips of 105x105
1-bit PNGs: `images_background.zip` (30 alphabets) and `images_evaluation.zip` (20 alphabets),
plus `all_runs.zip`, Lake's 20 one-shot runs (`keras_siamese.data.lake_runs`).

This module reads the two full zips directly (no extraction) into a TFDS dataset,
`koch_omniglot`, that keeps the drawer of every image, which the stock `omniglot` builder drops
but Koch et al.'s split needs. Every zip is validated by content before use, since a repackaged
copy cannot be checked against the official checksums. `load_omniglot` loads both sets into
memory.

All images come out as `uint8` arrays of shape `(105, 105, 1)` with 255 = white background and
0 = ink, the polarity of the PNG files.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import os
import pathlib
import re
import zipfile
import zlib
from typing import Iterator, Sequence

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
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
_SHARED_DATA = pathlib.Path("..", "shared", "data", "omniglot")


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
    return beside_checkout(_SHARED_DATA)


def beside_checkout(relative: pathlib.Path) -> pathlib.Path | None:
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


def local_or_downloaded_zip(name: str, data_dir: str | os.PathLike | None) -> pathlib.Path:
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
def zip_errors(path: os.PathLike | str) -> Iterator[None]:
    """Turns the many ways a damaged zip fails into one OmniglotDataError naming the file."""
    try:
        yield
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise OmniglotDataError(
            f"{path}: not a readable zip archive ({error}); expected an intact Omniglot zip, "
            "copy or download it again."
        ) from error


def open_zip(path: os.PathLike | str) -> zipfile.ZipFile:
    """Opens an Omniglot zip; a missing or damaged file raises OmniglotDataError naming it."""
    if not os.path.isfile(path):
        raise OmniglotDataError(f"{path}: file not found; expected an Omniglot zip there.")
    with zip_errors(path):
        return zipfile.ZipFile(path)


def decode_png(data: bytes, path: os.PathLike | str, member: str) -> np.ndarray:
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


def check_background_is_white(images: np.ndarray, path: os.PathLike | str) -> None:
    """Raises OmniglotDataError if ``images`` look inverted (mostly black)."""
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


SPLITS: dict[str, _SplitSpec] = {
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


def read_split_zip(
    path: os.PathLike | str, spec: _SplitSpec
) -> tuple[OmniglotImages, list[bytes]]:
    """Reads and fully validates one of the two full zips.

    Checks run cheapest first, so a wrong zip fails before anything is decoded: member names,
    then counts, then every PNG.

    Returns:
        The decoded split and the PNG file contents, both sorted by (character, drawer).
    """
    with open_zip(path) as archive, zip_errors(path):
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

    images = np.stack([decode_png(png, path, name) for png, name in zip(pngs, members)])
    check_background_is_white(images, path)
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


class KochOmniglot(tfds.core.GeneratorBasedBuilder):
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
            for split, spec in SPLITS.items()
        }

    @staticmethod
    def _zip_path(dl_manager: tfds.download.DownloadManager, name: str) -> os.PathLike:
        try:
            manual = dl_manager.manual_dir / f"{name}.zip"
        except AssertionError:  # TFDS's way of saying the manual folder is missing or empty
            manual = None
        if manual is not None and manual.exists():
            return manual
        # No checksum is registered: the zips are verified by content in read_split_zip.
        return dl_manager.download(OFFICIAL_URLS[name])

    def _generate_examples(self, path: os.PathLike, spec: _SplitSpec):
        # Everything is validated before the first example is yielded, so a bad zip never
        # leaves a partly written split behind.
        split, pngs = read_split_zip(path, spec)
        for i in range(len(split)):
            key = f"{split.character[i]:04d}_{split.drawer[i]:02d}"
            yield key, {
                # The validated 1-bit PNG is stored as is: re-encoding the decoded pixels gives
                # the same pixels, only slower to prepare (docs/design.md, "The data flow").
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
                for spec in SPLITS.values()
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
    return {split: _load_split(builder, split) for split in SPLITS}


def _load_split(builder: tfds.core.DatasetBuilder, split: str) -> OmniglotImages:
    # batch_size=-1 yields the whole split as one batch of arrays instead of 19,280 examples.
    batch = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    return OmniglotImages(
        images=batch["image"],
        alphabet=np.char.decode(batch["alphabet"].astype(bytes), "utf-8"),
        character=batch["character"].astype(np.int32),
        drawer=batch["drawer"].astype(np.int32),
    )
