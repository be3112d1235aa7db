"""A user's own folder of image classes, read into the structure the training pipeline uses.

Two layouts are read, the convention of `keras.utils.image_dataset_from_directory` and of
TFDS's `ImageFolder`, and its two-level form for one-shot tasks within a group:

    root/<class>/<image files>              one level: "class" names
    root/<group>/<class>/<image files>      two levels: "group/class" names (Omniglot's
                                            alphabet/character)

`read_image_folder` decodes every image with Pillow (PNG, JPEG, GIF, BMP, PGM/PPM/PBM/PNM,
TIFF, WebP), converts it to grey or colour, fits it to a square with the same
`fit_to_square` as the rest of the project, and returns an `ImageFolder` whose `images`
is an `OmniglotImages`: `alphabet` holds the group, `character` the class index and `drawer`
the image's 1-based position within its class. The prepared arrays are cached, so a second
read of an unchanged folder only loads one file. `split_classes` cuts the classes (or the
groups) into training, validation and test; `write_split`, `read_split` and `apply_split`
keep that split in a JSON file and apply it.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import sys
import struct
import warnings
import zipfile
import zlib

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_siamese.data.omniglot import OmniglotImages
from keras_siamese.files import replace_atomically, write_text_atomically
from keras_siamese.preprocessing import DEFAULT_MAX_PIXELS, fit_to_square

CACHE_DIR_ENV = "KERAS_SIAMESE_CACHE_DIR"
DEFAULT_CACHE_DIR = pathlib.Path("~", ".cache", "keras_siamese", "folders")

# The names Pillow decodes as PNG, JPEG, GIF, BMP, the Netpbm formats, TIFF and WebP.
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".gif", ".bmp", ".dib", ".pgm", ".ppm", ".pbm",
     ".pnm", ".tif", ".tiff", ".webp"}
)  # fmt: skip

# Why files are left out, the keys of ImageFolder.skipped.
HIDDEN_FILE, HIDDEN_FOLDER = "hidden file", "hidden folder"
NOT_AN_IMAGE = "not an image by its name (README, .txt, ...)"
NOT_A_FILE = "neither a file nor a folder (a broken link, a device, ...)"

# Bumped whenever the prepared pixels for the same files would change.
_CACHE_VERSION = 1

# More files than this show a progress bar while they are decoded.
_PROGRESS_FROM = 300

# Grey from colour with the weights of keras_siamese.preprocessing.decode_images, so that a
# model trained on a folder sees the same grey as one served the same files.
_GREY_WEIGHTS = np.array([0.2989, 0.5870, 0.1141], np.float32)

_LAYOUTS = (
    "expected one of two layouts: root/<class>/<image files> (one level, as "
    "keras.utils.image_dataset_from_directory) or root/<group>/<class>/<image files> (two "
    "levels, as Omniglot's alphabet/character)"
)
_SPLIT_PARTS = ("train", "validation", "test")


class ImageFolderError(ValueError):
    """A folder of image classes, one of its files, or a split of it is not as expected."""


@dataclasses.dataclass(frozen=True, eq=False)
class ImageFolder:
    """The images of a folder of classes, prepared for training.

    Attributes:
        images: `images` uint8 `(N, S, S, C)`, the raw pixel values (not inverted);
            `alphabet` the group folder of each image ("" in a one-level folder);
            `character` int32, the class's index into `class_names`; `drawer` int32, the
            image's 1-based position within its class (files sorted by name).
        class_names: "group/class" (two levels) or "class" (one level), sorted.
        files: each image's path relative to `root`, row-aligned with `images`.
        root: absolute path of the folder.
        skipped: files and folders left out on purpose, counted by reason.
        converted: images changed to fit, counted by kind of change.
    """

    images: OmniglotImages
    class_names: tuple[str, ...]
    files: tuple[str, ...]
    root: str
    skipped: dict[str, int]
    converted: dict[str, int]

    @property
    def groups(self) -> tuple[str, ...]:
        """The group folders, sorted; empty for a one-level folder."""
        return tuple(sorted({name.split("/")[0] for name in self.class_names if "/" in name}))

    def summary(self) -> str:
        """One line on what was read, and one on what was skipped or converted, if anything."""
        groups = f" ({len(self.groups)} groups)" if self.groups else ""
        lines = [
            f"{len(self.files)} images of {len(self.class_names)} classes{groups} from {self.root}"
        ]
        notes = [
            f"{what}: " + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
            for what, counts in (("skipped", self.skipped), ("converted", self.converted))
            if counts
        ]
        if notes:
            lines.append("; ".join(notes))
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Finding the classes
# ---------------------------------------------------------------------------------------------


def _list_folder(folder: pathlib.Path, skipped: collections.Counter) -> tuple[list[str], list[str]]:
    """The names of ``folder``'s subfolders and image files, sorted; the rest is counted."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as error:
        raise ImageFolderError(f"{folder}: cannot list the folder ({error}).") from error
    folders, images = [], []
    for entry in entries:
        if entry.name.startswith("."):
            skipped[HIDDEN_FOLDER if entry.is_dir() else HIDDEN_FILE] += 1
        elif entry.is_dir():
            folders.append(entry.name)
        elif not entry.is_file():
            skipped[NOT_A_FILE] += 1
        elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
            images.append(entry.name)
        else:
            skipped[NOT_AN_IMAGE] += 1
    return folders, images


def _find_classes(root: pathlib.Path, skipped: collections.Counter) -> dict[str, list[str]]:
    """Each class name and its image files (relative to ``root``), checked against the layouts."""
    folders, images = _list_folder(root, skipped)
    if images:
        raise ImageFolderError(
            f"{root}: {len(images)} image files directly in the folder (e.g. {images[0]}); "
            f"{_LAYOUTS}."
        )
    if not folders:
        raise ImageFolderError(f"{root}: no class folders in the folder; {_LAYOUTS}.")
    contents = {name: _list_folder(root / name, skipped) for name in folders}
    for name, (subfolders, files) in contents.items():
        if subfolders and files:
            raise ImageFolderError(
                f"{root / name}: holds both image files (e.g. {files[0]}) and folders (e.g. "
                f"{subfolders[0]}/); {_LAYOUTS}."
            )
    classes = [name for name, (_, files) in contents.items() if files]
    groups = [name for name, (subfolders, _) in contents.items() if subfolders]
    if classes and groups:
        raise ImageFolderError(
            f"{root}: mixed depths: {classes[0]}/ holds image files (a class) but {groups[0]}/ "
            f"holds folders (a group); {_LAYOUTS}."
        )
    found = {}
    if not groups:  # one level
        for name, (_, files) in contents.items():
            if not files:
                raise ImageFolderError(
                    f"{root / name}: class folder holds no images; expected image files "
                    f"({', '.join(sorted(IMAGE_EXTENSIONS))})."
                )
            found[name] = [f"{name}/{file}" for file in files]
        return found
    for group, (subfolders, _) in contents.items():
        if not subfolders:
            raise ImageFolderError(
                f"{root / group}: group folder holds no class folders; {_LAYOUTS}."
            )
        for name in subfolders:
            deeper, files = _list_folder(root / group / name, skipped)
            if deeper:
                raise ImageFolderError(
                    f"{root / group / name / deeper[0]}: a folder three levels deep; {_LAYOUTS}."
                )
            if not files:
                raise ImageFolderError(
                    f"{root / group / name}: class folder holds no images; expected image "
                    f"files ({', '.join(sorted(IMAGE_EXTENSIONS))})."
                )
            found[f"{group}/{name}"] = [f"{group}/{name}/{file}" for file in files]
    return found


def _check_classes(root: pathlib.Path, classes: dict[str, list[str]]) -> None:
    """One-shot learning needs two classes, and two images of every class."""
    lonely = [name for name, files in classes.items() if len(files) < 2]
    if lonely:
        others = f" (and {len(lonely) - 1} more such classes)" if len(lonely) > 1 else ""
        raise ImageFolderError(
            f"{root / lonely[0]}: class {lonely[0]!r} has one image, {classes[lonely[0]][0]}"
            f"{others}; one-shot training and testing need at least 2 images per class."
        )
    if len(classes) < 2:
        raise ImageFolderError(
            f"{root}: {len(classes)} class ({', '.join(classes)}); one-shot learning needs at "
            "least 2 classes."
        )


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def _too_large(path: pathlib.Path, size: str, limit: str) -> ImageFolderError:
    return ImageFolderError(
        f"{path}: {size}, over {limit}; refused before decoding. Resize the image, or raise "
        "max_pixels if it is meant to be this large."
    )


def _decode(path: pathlib.Path, channels: int, max_pixels: int, kinds: set[str]) -> np.ndarray:
    """The file's first frame as float32 ``(H, W, channels)`` pixel values in 0..255.

    The size the header declares is checked against ``max_pixels`` before anything is decoded.
    """
    with warnings.catch_warnings():
        # Pillow's decompression-bomb warning becomes the error below, here only.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise _too_large(
                        path, f"{width}x{height} = {width * height:,} pixels",
                        f"max_pixels={max_pixels:,}",
                    )  # fmt: skip
                if getattr(image, "is_animated", False):
                    kinds.add("animated: first frame only")
                    image.seek(0)
                image.load()
                return _pixels(image, channels, kinds)
        except ImageFolderError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise _too_large(
                path, f"({error})", f"Pillow's decompression-bomb limit of "
                f"{Image.MAX_IMAGE_PIXELS:,} pixels",
            ) from error  # fmt: skip
        except Image.UnidentifiedImageError as error:
            raise ImageFolderError(
                f"{path}: not a readable image; expected an image file of the format its name "
                f"says ({', '.join(sorted(IMAGE_EXTENSIONS))})."
            ) from error
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as error:
            raise ImageFolderError(
                f"{path}: truncated or corrupt ({error}); expected a complete image file."
            ) from error


def _deep_to_8_bits(image: Image.Image, kinds: set[str]) -> np.ndarray:
    """A 16-bit, 32-bit or floating-point grey image scaled (not clipped) to 0..255."""
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        # Floating-point images hold 0..1 or 0..255; only the latter is clipped.
        kinds.add("floating point to 8-bit")
        if values.size and values.min() >= 0 and values.max() <= 1:
            return values * 255.0
        return np.clip(values, 0, 255)
    if image.mode.startswith("I;16") or (values.min() >= 0 and values.max() <= 65535):
        # Mode "I" within 0..65535 is 16-bit too: Pillow reads 16-bit PGM files that way.
        kinds.add("16-bit to 8-bit")
        return values / 257.0
    kinds.add("32-bit to 8-bit")
    if values.min() < 0:  # signed: -2^31 maps to 0
        values = values + 2.0**31
    return values / ((2.0**32 - 1) / 255.0)


def _pixels(image: Image.Image, channels: int, kinds: set[str]) -> np.ndarray:
    """float32 ``(H, W, channels)`` pixel values in 0..255 of a decoded Pillow image."""
    mode = image.mode
    if mode == "F" or mode == "I" or mode.startswith("I;16"):
        pixels = _deep_to_8_bits(image, kinds)[..., None]
    else:
        has_alpha = mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in image.info
        if mode == "1":
            kinds.add("1-bit to 8-bit")
        elif mode in ("P", "PA"):
            kinds.add("palette to colour")
        elif mode not in ("L", "LA", "RGB", "RGBA"):
            kinds.add(f"{mode} to RGB")
        if mode not in ("L", "LA", "RGB", "RGBA") or "transparency" in image.info:
            grey = mode in ("1", "L", "LA", "La")
            target = ("L" if grey else "RGB") + ("A" if has_alpha else "")
            image = image.convert(target)
        pixels = np.asarray(image, np.float32)
        if pixels.ndim == 2:
            pixels = pixels[..., None]
        if pixels.shape[-1] in (2, 4):
            alpha = pixels[..., -1:] / 255.0
            pixels = pixels[..., :-1]
            if np.any(alpha < 1):
                kinds.add("transparency over white")
                # Transparent pixels are blank paper, as in decode_images.
                pixels = pixels * alpha + 255.0 * (1.0 - alpha)
    if pixels.shape[-1] == 3 and channels == 1:
        kinds.add("colour to grey")
        pixels = pixels @ _GREY_WEIGHTS[:, None]
    elif pixels.shape[-1] == 1 and channels == 3:
        kinds.add("grey to colour")
        pixels = np.repeat(pixels, 3, axis=-1)
    return pixels.astype(np.float32)


@functools.cache
def _square_fitter(image_size: int, channels: int):
    """``fit_to_square`` to uint8, as a ``tf.function`` traced once for any image size."""

    @tf.function(input_signature=[tf.TensorSpec((None, None, channels), tf.float32)])
    def fit(pixels: tf.Tensor) -> tf.Tensor:
        square = fit_to_square(pixels, image_size)
        return tf.cast(tf.clip_by_value(tf.round(square), 0.0, 255.0), tf.uint8)

    return fit


def _prepare(
    root: pathlib.Path, files: list[str], image_size: int, channels: int, max_pixels: int,
    verbose: bool,
) -> tuple[np.ndarray, dict[str, int]]:  # fmt: skip
    """Every file decoded, converted and fitted: uint8 ``(N, S, S, C)``, and the conversions."""
    import keras  # for its progress bar

    fit = _square_fitter(image_size, channels)
    images = np.empty((len(files), image_size, image_size, channels), np.uint8)
    converted = collections.Counter()
    progress = keras.utils.Progbar(len(files), unit_name="image")
    # A progress bar in a terminal; a log file gets the summary only.
    show_progress = verbose and len(files) > _PROGRESS_FROM and sys.stdout.isatty()
    for i, file in enumerate(files):
        kinds: set[str] = set()
        images[i] = fit(_decode(root / file, channels, max_pixels, kinds)).numpy()
        converted.update(kinds)
        if show_progress:
            progress.update(i + 1)
    return images, dict(converted)


# ---------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------


def _cache_path(
    root: pathlib.Path, files: list[str], image_size: int, channels: int, max_pixels: int,
    cache_dir: str | os.PathLike | None,
) -> pathlib.Path:  # fmt: skip
    """``<cache folder>/<folder and settings>-<content key>.npz``.

    The key is a sha256 over the cache format, each image file's relative path, size and
    modification time, and the settings: changing, adding or removing a file changes it.
    """
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR
    settings = {"image_size": image_size, "channels": channels, "max_pixels": max_pixels}
    stats = []
    for file in files:
        stat = (root / file).stat()
        stats.append([file, stat.st_size, stat.st_mtime_ns])
    key = {"version": _CACHE_VERSION, "files": stats, **settings}
    family = {"root": str(root), **settings}
    return pathlib.Path(cache_dir).expanduser() / f"{_digest(family)[:16]}-{_digest(key)}.npz"


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode("utf-8")).hexdigest()


def _load_cache(
    path: pathlib.Path, files: list[str], shape: tuple[int, ...]
) -> tuple[np.ndarray, dict[str, int]] | None:
    """The cached images and conversions, or None (with a note) if the file cannot serve."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as cached:
            images, cached_files = cached["images"], cached["files"].tolist()
            converted = json.loads(str(cached["converted"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        # Any damage: preparing the images again is always safe.
        print(f"Note: the cache file {path} is unreadable ({type(error).__name__}: {error}); "
              "preparing the images again.")  # fmt: skip
        return None
    if cached_files != files or images.shape != shape or images.dtype != np.uint8:
        print(f"Note: the cache file {path} holds other images; preparing them again.")
        return None
    return images, converted


def _save_cache(path: pathlib.Path, files: list[str], images: np.ndarray, converted: dict) -> None:
    """Writes the cache file atomically and removes older ones of the same folder and settings."""
    try:
        replace_atomically(
            path,
            lambda partial: np.savez_compressed(
                partial, images=images, files=np.array(files, dtype=str),
                converted=np.array(json.dumps(converted)),
            ),
        )  # fmt: skip
        for older in path.parent.glob(f"{path.name.split('-')[0]}-*.npz"):
            if older != path:
                older.unlink(missing_ok=True)
    except OSError as error:
        print(f"Note: could not write the cache file {path} ({error}); the images will be "
              "prepared again next time.")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Reading a folder
# ---------------------------------------------------------------------------------------------


def read_image_folder(
    path: str | os.PathLike,
    *,
    image_size: int,
    channels: int = 1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    cache_dir: str | os.PathLike | None = None,
    verbose: bool = True,
) -> ImageFolder:
    """Reads a folder of image classes into memory, once prepared then from a cache.

    The folder holds one subfolder per class (`root/<class>/<images>`) or one per group of
    classes (`root/<group>/<class>/<images>`). Hidden files and folders and files whose name
    is not an image's are left out and counted. Every image's header is checked against
    `max_pixels` before it is decoded; its first frame is converted to `channels` (alpha over
    white, deeper than 8 bits scaled to 8 bits) and fitted to an `image_size` square with
    `fit_to_square`, which keeps the aspect ratio.

    Args:
        path: the folder.
        image_size: side of the square images.
        channels: 1 (grey) or 3 (RGB).
        max_pixels: the most pixels (width x height) an image may declare.
        cache_dir: where the prepared arrays are kept; default `$KERAS_SIAMESE_CACHE_DIR`,
            else `~/.cache/keras_siamese/folders`.
        verbose: print a progress bar for large folders and the summary.

    Returns:
        The `ImageFolder`, rows sorted by class name, then file name.

    Raises:
        ImageFolderError: the folder is missing or not laid out as expected, a class has
            fewer than 2 images, there are fewer than 2 classes, or an image file is
            unreadable, truncated or too large. The message names the file or folder.
        ValueError: `channels` is not 1 or 3, or `image_size` or `max_pixels` is not positive.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    if int(image_size) != image_size or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    if int(max_pixels) != max_pixels or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    image_size, max_pixels = int(image_size), int(max_pixels)
    root = pathlib.Path(path).expanduser().absolute()
    if not root.exists():
        raise ImageFolderError(f"{root}: no such folder; {_LAYOUTS}.")
    if not root.is_dir():
        raise ImageFolderError(f"{root}: not a folder; {_LAYOUTS}.")
    root = root.resolve()

    skipped = collections.Counter()
    classes = _find_classes(root, skipped)
    _check_classes(root, classes)
    class_names = tuple(sorted(classes))
    files = [file for name in class_names for file in classes[name]]

    cache = _cache_path(root, files, image_size, channels, max_pixels, cache_dir)
    shape = (len(files), image_size, image_size, channels)
    loaded = _load_cache(cache, files, shape)
    if loaded is not None:
        images, converted = loaded
        if verbose:
            print(f"Loaded {len(files)} prepared images from the cache {cache}")
    else:
        images, converted = _prepare(root, files, image_size, channels, max_pixels, verbose)
        _save_cache(cache, files, images, converted)

    character = np.repeat(np.arange(len(class_names), dtype=np.int32),
                          [len(classes[name]) for name in class_names])  # fmt: skip
    drawer = np.concatenate(
        [np.arange(1, len(classes[name]) + 1, dtype=np.int32) for name in class_names]
    )
    groups = [name.split("/")[0] if "/" in name else "" for name in class_names]
    folder = ImageFolder(
        images=OmniglotImages(
            images=images,
            alphabet=np.array(groups, dtype=str)[character],
            character=character,
            drawer=drawer,
        ),
        class_names=class_names,
        files=tuple(files),
        root=str(root),
        skipped=dict(sorted(skipped.items())),
        converted=dict(sorted(converted.items())),
    )
    if verbose:
        print(folder.summary())
    return folder


# ---------------------------------------------------------------------------------------------
# Splitting by class
# ---------------------------------------------------------------------------------------------


def split_classes(
    folder: ImageFolder,
    *,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    by: str = "auto",
) -> dict:
    """Shuffles the classes (or groups) into training, validation and test sets.

    Validation and test get `round(fraction * n)` of the n classes, at least 2 each, or of
    the n groups, at least 1 each; training keeps the rest and needs at least 2 classes.

    Args:
        folder: the folder to split.
        fractions: shares of training, validation and test, summing to 1.
        seed: seed of `numpy.random.default_rng`, which shuffles the classes or groups.
        by: "class", "group" (every class of a group goes to the same set: within-group
            one-shot tasks on unseen groups), or "auto": by group for a two-level folder of
            at least 3 groups, else by class.

    Returns:
        `{"by", "seed", "fractions", "train", "validation", "test"}`, the last three sorted
        lists of class names, disjoint and covering every class.

    Raises:
        ImageFolderError: too few classes or groups for the split; the message says how many
            are needed.
        ValueError: bad `fractions` or `by`.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be 3 non-negative shares summing to 1, got {fractions}")
    if by not in ("auto", "class", "group"):
        raise ValueError(f"by must be 'auto', 'class' or 'group', got {by!r}")
    groups = folder.groups
    if by == "auto":
        by = "group" if len(groups) >= 3 else "class"
    if by == "group":
        if not groups:
            raise ImageFolderError(
                f"{folder.root}: a split by group needs a two-level folder "
                "(root/<group>/<class>/<images>); this one has one level."
            )
        units, minimum, what = list(groups), 1, "groups"
    else:
        units, minimum, what = list(folder.class_names), 2, "classes"
    n = len(units)
    needed = 2 + 2 * minimum if by == "class" else 3
    if n < needed:
        raise ImageFolderError(
            f"{folder.root}: {n} {what}; a split by {by} needs at least {needed} (training, "
            f"validation and test each need {'2 classes' if by == 'class' else 'a group'})."
        )
    held_out = [max(minimum, round(share * n)) for share in fractions[1:]]
    if n - sum(held_out) < (2 if by == "class" else 1):
        raise ImageFolderError(
            f"{folder.root}: the fractions {fractions} give validation and test "
            f"{held_out[0]} and {held_out[1]} of the {n} {what}, which leaves too few for "
            "training (it needs at least 2 classes)."
        )
    order = [units[i] for i in np.random.default_rng(seed).permutation(n)]
    parts = {
        "validation": order[: held_out[0]],
        "test": order[held_out[0] : sum(held_out)],
        "train": order[sum(held_out) :],
    }
    if by == "group":
        parts = {
            part: [name for name in folder.class_names if name.split("/")[0] in chosen]
            for part, chosen in parts.items()
        }
        for part, names in parts.items():
            if len(names) < 2:
                raise ImageFolderError(
                    f"{folder.root}: with seed {seed}, the {part} set gets {len(names)} class "
                    "of its groups; every set needs at least 2 classes. Split by class, or use "
                    "groups of at least 2 classes."
                )
    split = {"by": by, "seed": int(seed), "fractions": list(fractions)}
    split.update({part: sorted(parts[part]) for part in _SPLIT_PARTS})
    return split


def _check_split(split, folder: ImageFolder, source: str) -> None:
    """Raises ImageFolderError unless ``split`` has three disjoint lists of the folder's classes."""
    expected = 'expected {"train": [...], "validation": [...], "test": [...]} of class names'
    if not isinstance(split, dict):
        raise ImageFolderError(f"{source}: not a split ({type(split).__name__}); {expected}.")
    for part in _SPLIT_PARTS:
        names = split.get(part)
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ImageFolderError(
                f"{source}: {part!r} is {'missing' if names is None else 'not a list of names'}"
                f"; {expected}."
            )
        if len(set(names)) != len(names):
            raise ImageFolderError(f"{source}: {part!r} lists a class twice.")
    for i, first in enumerate(_SPLIT_PARTS):
        for second in _SPLIT_PARTS[i + 1 :]:
            both = sorted(set(split[first]) & set(split[second]))
            if both:
                raise ImageFolderError(
                    f"{source}: {len(both)} classes are in both {first!r} and {second!r}, e.g. "
                    f"{both[:3]}; the three sets must be disjoint."
                )
    known = set(folder.class_names)
    unknown = sorted(name for part in _SPLIT_PARTS for name in split[part] if name not in known)
    if unknown:
        raise ImageFolderError(
            f"{source}: {len(unknown)} classes are not in the folder {folder.root}, e.g. "
            f"{unknown[:3]}; is it the split of another folder?"
        )


def write_split(split: dict, path: str | os.PathLike) -> None:
    """Writes ``split`` (from `split_classes`) as JSON, atomically."""
    for part in _SPLIT_PARTS:
        if not isinstance(split.get(part), list):
            raise TypeError(f"not a split: {part!r} is not a list of class names")
    write_text_atomically(path, json.dumps(split, indent=2, ensure_ascii=False) + "\n")


def read_split(path: str | os.PathLike, folder: ImageFolder) -> dict:
    """Reads a split written by `write_split`, checked against ``folder``.

    Classes of the folder that the split does not name are left out (the count is printed).

    Raises:
        ImageFolderError: the file is unreadable or not a split, its sets overlap, or it
            names classes the folder does not have.
    """
    path = pathlib.Path(path)
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ImageFolderError(f"{path}: cannot read the split file ({error}).") from error
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise ImageFolderError(
            f"{path}: not a JSON split file ({error}); expected the file write_split writes."
        ) from error
    _check_split(split, folder, str(path))
    named = set().union(*(split[part] for part in _SPLIT_PARTS))
    left_out = len(folder.class_names) - len(named)
    if left_out:
        print(f"{path}: {left_out} of the folder's {len(folder.class_names)} classes are in no "
              "set of the split and are left out.")  # fmt: skip
    return split


def apply_split(folder: ImageFolder, split: dict) -> dict[str, OmniglotImages]:
    """The folder's images of each set: `{"train", "validation", "test"}`.

    Character ids stay the folder's class indices (into `folder.class_names`).
    """
    _check_split(split, folder, "split")
    index = {name: i for i, name in enumerate(folder.class_names)}
    return {
        part: folder.images.select(
            np.isin(folder.images.character, [index[name] for name in split[part]])
        )
        for part in _SPLIT_PARTS
    }
