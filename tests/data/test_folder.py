"""Tests for keras_siamese.data.folder: a user's own folder of image classes, and its split.

The folders are built in tmp_path from the real ORL faces (written in other formats with
Pillow) and from Omniglot's small background zip; ORL itself is read where it lies.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import struct
import time
import warnings
import zipfile
import zlib

import numpy as np
import pytest
from conftest import REPO_ROOT
from PIL import Image

from keras_siamese import data
from keras_siamese.data import folder as folder_module
from keras_siamese.preprocessing import fit_to_square

SHARED = REPO_ROOT.parent / "shared" / "data"
ORL_DIR = SHARED / "orl_faces"
OMNIGLOT_SMALL_ZIP = SHARED / "omniglot" / "images_background_small1.zip"
NOT_AN_IMAGE = folder_module.NOT_AN_IMAGE


def orl_face(person: int = 1, number: int = 1) -> np.ndarray:
    """One ORL photograph: uint8 (112, 92), grey."""
    with Image.open(ORL_DIR / f"s{person}" / f"{number}.pgm") as image:
        return np.asarray(image)


def save(path: pathlib.Path, image: Image.Image | np.ndarray, **options) -> pathlib.Path:
    """Writes ``image`` to ``path`` (folders made), in the format the name says."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image.save(path, **options)
    return path


def orl_folder(root: pathlib.Path, people: int, per_person: int = 2, size=None) -> pathlib.Path:
    """``root/s<k>/<n>.png`` from the first ORL people, optionally resized to ``size``."""
    for person in range(1, people + 1):
        for number in range(1, per_person + 1):
            image = Image.fromarray(orl_face(person, number))
            save(root / f"s{person}" / f"{number}.png", image.resize(size) if size else image)
    return root


def expected(pixels: np.ndarray, image_size: int) -> np.ndarray:
    """What the folder reader must give for these 0..255 pixels, by fit_to_square itself."""
    pixels = np.asarray(pixels, np.float32)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    square = fit_to_square(pixels, image_size).numpy()
    return np.clip(np.round(square), 0, 255).astype(np.uint8)


def row(folder: data.ImageFolder, file: str) -> np.ndarray:
    return folder.images.images[folder.files.index(file)]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` grey pixels but holds almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    )  # fmt: skip


@pytest.fixture
def cache_dir(tmp_path) -> pathlib.Path:
    return tmp_path / "cache"


@pytest.fixture
def decoded_files(monkeypatch) -> list[str]:
    """The names of the files the reader opens with Pillow, recorded as it goes."""
    opened = []
    real_open = Image.open

    def watched_open(path, *args, **kwargs):
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(folder_module.Image, "open", watched_open)
    return opened


# --- ORL, as it lies ---------------------------------------------------------------------


def test_reads_orl_then_loads_it_from_the_cache(cache_dir, capsys):
    start = time.perf_counter()
    faces = data.read_image_folder(ORL_DIR, image_size=56, cache_dir=cache_dir)
    cold = time.perf_counter() - start
    out = capsys.readouterr().out
    assert "400/400" not in out  # no progress bar: the output is not a terminal
    assert f"400 images of 40 classes from {ORL_DIR.resolve()}" in out
    assert f"skipped: 2 {NOT_AN_IMAGE}" in out  # README.md and README.orl

    assert faces.root == str(ORL_DIR.resolve())
    assert faces.class_names == tuple(sorted(f"s{k}" for k in range(1, 41)))
    assert faces.images.images.shape == (400, 56, 56, 1)
    assert faces.images.images.dtype == np.uint8
    assert faces.skipped == {NOT_AN_IMAGE: 2} and faces.converted == {}
    # Files sorted by name within each class: 1, 10, 2, 3, ...; drawers count from 1.
    assert faces.files[:3] == ("s1/1.pgm", "s1/10.pgm", "s1/2.pgm")
    np.testing.assert_array_equal(faces.images.drawer, np.tile(np.arange(1, 11), 40))
    np.testing.assert_array_equal(faces.images.character, np.repeat(np.arange(40), 10))
    assert faces.images.character.dtype == faces.images.drawer.dtype == np.int32
    assert set(faces.images.alphabet) == {""}
    assert faces.files[faces.class_names.index("s7") * 10] == "s7/1.pgm"
    np.testing.assert_array_equal(row(faces, "s7/1.pgm"), expected(orl_face(7, 1), 56))

    start = time.perf_counter()
    again = data.read_image_folder(ORL_DIR, image_size=56, cache_dir=cache_dir)
    warm = time.perf_counter() - start
    out = capsys.readouterr().out
    assert "Loaded 400 prepared images from the cache" in out and "400/400" not in out
    np.testing.assert_array_equal(again.images.images, faces.images.images)
    assert again.files == faces.files and again.skipped == faces.skipped
    assert warm < cold / 3, (cold, warm)


# --- Formats, modes and sizes ---------------------------------------------------------------


def test_formats_and_mode_conversions_are_read_and_counted(tmp_path, cache_dir):
    face = orl_face(2, 1)
    grey, rgb = Image.fromarray(face), Image.fromarray(face).convert("RGB")
    rgba = np.dstack([np.repeat(face[..., None], 3, axis=-1), np.full_like(face, 255)])
    rgba[:40, :, 3] = 0  # the top transparent
    root = tmp_path / "faces"
    files = {
        # lossless, no conversion
        "grey/a.png": grey, "grey/b.TIFF": grey, "grey/c.bmp": grey, "grey/d.PGM": grey,
        # colour to grey
        "colour/a.JPG": rgb, "colour/b.webp": rgb,
        # palette
        "palette/a.gif": grey, "palette/b.png": rgb.quantize(64),
        # transparency over white, and colour to grey
        "alpha/a.png": Image.fromarray(rgba, "RGBA"), "alpha/b.png": Image.fromarray(rgba, "RGBA"),
        # 16 bits: I;16 PNG, and PGM (read by Pillow as mode I)
        "deep/a.png": Image.fromarray(face.astype(np.uint16) * 257),
        "deep/b.pgm": Image.fromarray(face.astype(np.uint16) * 257),
        # 1-bit, CMYK
        "other/a.pbm": grey.point(lambda v: 255 if v > 100 else 0).convert("1"),
        "other/b.jpeg": rgb.convert("CMYK"),
    }  # fmt: skip
    for name, image in files.items():
        save(root / name, image, **({"lossless": True} if name.endswith("webp") else {}))
    save(root / "animated" / "a.gif", grey, save_all=True, append_images=[grey.rotate(90)])
    save(root / "animated" / "b.png", grey)

    faces = data.read_image_folder(root, image_size=40, cache_dir=cache_dir, verbose=False)
    assert faces.class_names == ("alpha", "animated", "colour", "deep", "grey", "other", "palette")
    assert faces.converted == {
        "16-bit to 8-bit": 2,
        "1-bit to 8-bit": 1,
        "CMYK to RGB": 1,
        "animated: first frame only": 1,
        "colour to grey": 2 + 2 + 2 + 1 + 1,  # JPEG, WebP; palettes; alpha; CMYK; animated GIF
        "palette to colour": 2 + 1,  # GIF, palette PNG; the animated GIF
        "transparency over white": 2,
    }
    assert faces.skipped == {}
    reference = expected(face, 40)
    for name in ("grey/a.png", "grey/b.TIFF", "grey/c.bmp", "grey/d.PGM", "colour/b.webp",
                 "palette/a.gif", "deep/a.png", "deep/b.pgm", "animated/a.gif"):  # fmt: skip
        np.testing.assert_array_equal(row(faces, name), reference, err_msg=name)
    # JPEG is lossy; the transparent top is white paper.
    assert np.abs(row(faces, "colour/a.JPG").astype(int) - reference).mean() < 2
    white_top = face.copy()
    white_top[:40] = 255
    np.testing.assert_array_equal(row(faces, "alpha/a.png"), expected(white_top, 40))
    assert set(np.unique(np.asarray(Image.open(root / "other/a.pbm")))) == {False, True}

    colour = data.read_image_folder(
        root, image_size=40, channels=3, cache_dir=cache_dir, verbose=False
    )
    assert colour.images.images.shape == (16, 40, 40, 3)
    assert colour.converted["grey to colour"] == 4 + 2 + 1 + 1  # grey, deep, 1-bit, animated PNG
    assert "colour to grey" not in colour.converted
    np.testing.assert_array_equal(row(colour, "grey/a.png"), np.repeat(reference, 3, axis=-1))
    np.testing.assert_array_equal(row(colour, "colour/b.webp"), row(colour, "grey/a.png"))


def test_channels_must_be_grey_or_colour(tmp_path):
    with pytest.raises(ValueError, match="channels must be 1 .* or 3"):
        data.read_image_folder(orl_folder(tmp_path, 2), image_size=8, channels=4)


def test_aspect_ratio_is_kept(tmp_path, cache_dir):
    """A 92x112 face is padded to a square with its border's mean, then resized: not stretched."""
    faces = data.read_image_folder(
        orl_folder(tmp_path / "faces", 2), image_size=28, cache_dir=cache_dir, verbose=False
    )
    face = orl_face(1, 1)
    np.testing.assert_array_equal(row(faces, "s1/1.png"), expected(face, 28))
    stretched = np.asarray(Image.fromarray(face).resize((28, 28), Image.BOX))
    assert np.abs(row(faces, "s1/1.png")[..., 0].astype(int) - stretched).mean() > 10
    # The padded columns at the sides hold one value: the mean of the face's border.
    border = np.concatenate([face[0], face[-1], face[:, 0], face[:, -1]]).mean()
    np.testing.assert_allclose(row(faces, "s1/1.png")[:, 0, 0], round(border), atol=1)


# --- Two levels: Omniglot as a folder -------------------------------------------------------


@pytest.fixture(scope="module")
def omniglot_root(tmp_path_factory) -> pathlib.Path:
    """Four characters of each of three alphabets of Omniglot's small background set, as
    ``<alphabet>/<character>/NNNN_DD.png``."""
    root = tmp_path_factory.mktemp("omniglot")
    characters = {f"character0{k}" for k in range(1, 5)}
    with zipfile.ZipFile(OMNIGLOT_SMALL_ZIP) as archive:
        for member in archive.namelist():
            parts = member.split("/")  # images_background_small1/<alphabet>/<character>/<file>
            if len(parts) != 4 or not parts[3].endswith(".png"):
                continue
            if parts[1] in ("Balinese", "Greek", "Latin") and parts[2] in characters:
                image = Image.open(io.BytesIO(archive.read(member)))
                save(root / parts[1] / parts[2] / parts[3], image)
    return root


@pytest.fixture(scope="module")
def omniglot_folder(omniglot_root, tmp_path_factory) -> data.ImageFolder:
    return data.read_image_folder(
        omniglot_root, image_size=105, cache_dir=tmp_path_factory.mktemp("cache"), verbose=False
    )


def test_two_levels_omniglot_alphabets_are_the_groups(omniglot_root, omniglot_folder):
    folder = omniglot_folder
    assert folder.groups == ("Balinese", "Greek", "Latin")
    assert len(folder.class_names) == 12 and folder.class_names[0] == "Balinese/character01"
    assert folder.images.images.shape == (240, 105, 105, 1)
    assert folder.converted == {"1-bit to 8-bit": 240}
    assert "(3 groups)" in folder.summary()
    np.testing.assert_array_equal(folder.images.drawer, np.tile(np.arange(1, 21), 12))
    alphabet_of_class = np.array([name.split("/")[0] for name in folder.class_names])
    np.testing.assert_array_equal(
        folder.images.alphabet, alphabet_of_class[folder.images.character]
    )
    # 105x105 squares pass unchanged: the PNG's own 0/255 pixels.
    for i in (0, 117, 239):
        with Image.open(omniglot_root / folder.files[i]) as image:
            pixels = np.asarray(image.convert("L"))
        np.testing.assert_array_equal(folder.images.images[i, ..., 0], pixels)
    assert folder.files[20].startswith("Balinese/character02/")


# --- Bad folders and files ------------------------------------------------------------------


def tiny(person: int = 1, number: int = 1) -> Image.Image:
    """A small real face (23x28), for folders that are read only to be refused."""
    return Image.fromarray(orl_face(person, number)).resize((23, 28))


def two_classes(root: pathlib.Path) -> None:
    for name in ("a/1.png", "a/2.png", "b/1.png", "b/2.png"):
        save(root / name, tiny())


def truncated_png(root: pathlib.Path) -> None:
    two_classes(root)
    encoded = (root / "b" / "2.png").read_bytes()
    (root / "b" / "2.png").write_bytes(encoded[: len(encoded) // 2])


def truncated_jpeg(root: pathlib.Path) -> None:
    two_classes(root)
    save(root / "b" / "3.jpg", Image.fromarray(orl_face()))
    encoded = (root / "b" / "3.jpg").read_bytes()
    (root / "b" / "3.jpg").write_bytes(encoded[: len(encoded) // 2])


def group_without_classes(root: pathlib.Path) -> None:
    for name in ("g1/a/1.png", "g1/a/2.png", "g1/b/1.png", "g1/b/2.png"):
        save(root / name, tiny())
    (root / "g2").mkdir()


BAD_FOLDERS = {
    "missing": (None, r"nowhere: no such folder; expected one of two layouts"),
    "a file": (lambda root: root.write_bytes(b""), r"folder: not a folder"),
    "empty": (lambda root: root.mkdir(), r"folder: no class folders in the folder; expected"),
    "only hidden": (
        lambda root: (save(root / ".a" / "1.png", tiny()), save(root / ".b" / "1.png", tiny())),
        r"no class folders",
    ),
    "images in the root": (
        lambda root: (two_classes(root), save(root / "stray.png", tiny())),
        (
            r"folder: 1 image files directly in the folder \(e.g. stray.png\); expected one of "
            r"two layouts: root/<class>/<image files> .* root/<group>/<class>/<image files>"
        ),
    ),
    "mixed depths": (
        lambda root: (two_classes(root), save(root / "g" / "c" / "1.png", tiny())),
        r"mixed depths: a/ holds image files \(a class\) but g/ holds folders \(a group\)",
    ),
    "images and folders": (
        lambda root: (two_classes(root), save(root / "b" / "c" / "1.png", tiny())),
        r"folder/b: holds both image files \(e.g. 1.png\) and folders \(e.g. c/\)",
    ),
    "three levels": (
        lambda root: save(root / "g" / "c" / "d" / "1.png", tiny()),
        r"folder/g/c/d: a folder three levels deep",
    ),
    "group without classes": (group_without_classes, r"folder/g2: group folder holds no class"),
    "class without images": (
        lambda root: (two_classes(root), (root / "c").mkdir(), (root / "c" / "notes.txt").touch()),
        r"folder/c: class folder holds no images; expected image files \(.*\.png",
    ),
    "one image": (
        lambda root: (two_classes(root), save(root / "c" / "only.png", tiny())),
        (
            r"folder/c: class 'c' has one image, c/only.png; one-shot training and testing need "
            r"at least 2 images per class"
        ),
    ),
    "one class": (
        lambda root: (save(root / "a" / "1.png", tiny()), save(root / "a" / "2.png", tiny())),
        r"folder: 1 class \(a\); one-shot learning needs at least 2 classes",
    ),
    "not an image": (
        lambda root: (two_classes(root), (root / "b" / "3.png").write_text("hello")),
        r"folder/b/3.png: not a readable image; expected an image file",
    ),
    "empty image file": (
        lambda root: (two_classes(root), (root / "b" / "3.webp").write_bytes(b"")),
        r"folder/b/3.webp: not a readable image",
    ),
    "truncated PNG": (truncated_png, r"folder/b/2.png: truncated or corrupt \(.*\); expected a "),
    "truncated JPEG": (truncated_jpeg, r"folder/b/3.jpg: truncated or corrupt"),
}


@pytest.mark.parametrize("case", BAD_FOLDERS, ids=list(BAD_FOLDERS))
def test_bad_folders_are_refused_with_the_file_named(tmp_path, cache_dir, case):
    build, message = BAD_FOLDERS[case]
    root = tmp_path / ("nowhere" if build is None else "folder")
    if build is not None:
        build(root)
    with pytest.raises(data.ImageFolderError, match=message):
        data.read_image_folder(root, image_size=8, cache_dir=cache_dir, verbose=False)


def test_too_large_an_image_is_refused_before_decoding(tmp_path, cache_dir):
    root = tmp_path / "folder"
    two_classes(root)
    save(root / "b" / "big.png", Image.fromarray(np.tile(orl_face(), (20, 30))))  # 2760 x 2240
    with pytest.raises(
        data.ImageFolderError,
        match=r"folder/b/big.png: 2760x2240 = 6,182,400 pixels, over max_pixels=1,000,000; "
        "refused before decoding",
    ):
        data.read_image_folder(root, image_size=8, max_pixels=1_000_000, cache_dir=cache_dir)
    # A header with (almost) no pixel data behind it: refused for its size, not as truncated.
    (root / "b" / "big.png").write_bytes(png_header_only(5000, 5000))
    with pytest.raises(data.ImageFolderError, match=r"5000x5000 = 25,000,000 pixels, over max_"):
        data.read_image_folder(root, image_size=8, cache_dir=cache_dir)


@pytest.mark.parametrize("side", [10_000, 20_000])  # Pillow's warning, then its error
def test_pillow_decompression_bombs_become_the_same_error(tmp_path, cache_dir, side):
    root = tmp_path / "folder"
    two_classes(root)
    (root / "b" / "bomb.png").write_bytes(png_header_only(side, side))
    limit, filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    with pytest.raises(
        data.ImageFolderError, match=r"folder/b/bomb.png: .*decompression-bomb limit"
    ):
        data.read_image_folder(root, image_size=8, max_pixels=10**10, cache_dir=cache_dir)
    assert Image.MAX_IMAGE_PIXELS == limit and warnings.filters == filters


def test_skipped_files_are_counted(tmp_path, cache_dir, capsys):
    root = tmp_path / "folder"
    two_classes(root)
    names = (".DS_Store", "README", "labels.csv", "a/Thumbs.db", "a/notes.txt", "b/.hidden.png")
    for name in names:
        (root / name).write_bytes(b"not an image")
    save(root / ".thumbnails" / "x.png", tiny())
    save(root / "a" / ".cache" / "x.png", tiny())
    folder = data.read_image_folder(root, image_size=8, cache_dir=cache_dir)
    assert folder.skipped == {"hidden file": 2, "hidden folder": 2, NOT_AN_IMAGE: 4}
    assert folder.files == ("a/1.png", "a/2.png", "b/1.png", "b/2.png")
    assert f"skipped: 2 hidden file, 2 hidden folder, 4 {NOT_AN_IMAGE}" in capsys.readouterr().out


# --- The cache ------------------------------------------------------------------------------


def test_cache_is_reused_and_follows_changes(tmp_path, cache_dir, decoded_files, capsys):
    root = orl_folder(tmp_path / "faces", 3, per_person=4)

    def read():
        decoded_files.clear()
        folder = data.read_image_folder(root, image_size=24, cache_dir=cache_dir)
        return folder, capsys.readouterr().out, sorted(cache_dir.glob("*.npz"))

    first, _, (cache_file,) = read()
    assert len(decoded_files) == 12
    again, out, cached = read()
    assert decoded_files == [] and "Loaded 12 prepared images from the cache" in out
    assert cached == [cache_file]
    np.testing.assert_array_equal(again.images.images, first.images.images)

    # A changed file: the key changes, everything is prepared again, the old file goes.
    flipped = orl_face(2, 3)[:, ::-1]
    save(root / "s2" / "3.png", flipped)
    changed, out, cached = read()
    assert len(decoded_files) == 12 and "from the cache" not in out
    assert len(cached) == 1 and cached != [cache_file]
    np.testing.assert_array_equal(row(changed, "s2/3.png"), expected(flipped, 24))

    # An added and a removed file change the key too.
    save(root / "s3" / "9.png", orl_face(3, 9))
    added, out, after_adding = read()
    assert len(added.files) == 13 and decoded_files and after_adding != cached
    (root / "s1" / "4.png").unlink()
    removed, out, after_removing = read()
    assert len(removed.files) == 12 and decoded_files and after_removing != after_adding
    assert read()[0].files == removed.files and decoded_files == []

    # The same size, a new modification time: prepared again.
    stat = (root / "s1" / "1.png").stat()
    os.utime(root / "s1" / "1.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    _, out, after_touching = read()
    assert len(decoded_files) == 12 and after_touching != after_removing


def test_a_corrupt_cache_file_is_rebuilt(tmp_path, cache_dir, decoded_files, capsys):
    root = orl_folder(tmp_path / "faces", 2)
    first = data.read_image_folder(root, image_size=16, cache_dir=cache_dir, verbose=False)
    (cache_file,) = cache_dir.glob("*.npz")
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    decoded_files.clear()
    rebuilt = data.read_image_folder(root, image_size=16, cache_dir=cache_dir, verbose=False)
    assert f"Note: the cache file {cache_file} is unreadable" in capsys.readouterr().out
    assert len(decoded_files) == 4
    np.testing.assert_array_equal(rebuilt.images.images, first.images.images)
    decoded_files.clear()
    data.read_image_folder(root, image_size=16, cache_dir=cache_dir, verbose=False)
    assert decoded_files == [] and capsys.readouterr().out == ""


def test_cache_folder_from_the_environment(tmp_path, monkeypatch):
    root = orl_folder(tmp_path / "faces", 2)
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path / "from-env"))
    data.read_image_folder(root, image_size=16, verbose=False)
    assert len(list((tmp_path / "from-env").glob("*.npz"))) == 1
    # Other settings are other arrays: a second cache file beside the first.
    data.read_image_folder(root, image_size=12, verbose=False)
    assert len(list((tmp_path / "from-env").glob("*.npz"))) == 2


# --- Splitting by class ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def orl_small(tmp_path_factory) -> data.ImageFolder:
    """ORL's 40 people, two small photographs each."""
    root = orl_folder(tmp_path_factory.mktemp("orl") / "faces", 40, per_person=2, size=(23, 28))
    return data.read_image_folder(
        root, image_size=8, cache_dir=tmp_path_factory.mktemp("cache"), verbose=False
    )


def test_split_by_class_is_disjoint_covering_and_seeded(orl_small):
    split = data.split_classes(orl_small, seed=3)
    assert split["by"] == "class" and split["seed"] == 3 and split["fractions"] == [0.6, 0.2, 0.2]
    parts = [set(split[part]) for part in ("train", "validation", "test")]
    assert [len(part) for part in parts] == [24, 8, 8]
    assert set.union(*parts) == set(orl_small.class_names)
    assert sum(len(part) for part in parts) == 40
    assert data.split_classes(orl_small, seed=3) == split
    assert data.split_classes(orl_small, seed=4)["test"] != split["test"]

    sets = data.apply_split(orl_small, split)
    assert [len(sets[part]) for part in ("train", "validation", "test")] == [48, 16, 16]
    for part, images in sets.items():
        # Character ids stay the folder's class indices.
        assert {orl_small.class_names[i] for i in images.character} == set(split[part])


def test_split_minimums(orl_small, tmp_path):
    six = data.read_image_folder(orl_folder(tmp_path / "six", 6), image_size=8, verbose=False,
                                 cache_dir=tmp_path / "cache")  # fmt: skip
    split = data.split_classes(six)
    assert [len(split[part]) for part in ("train", "validation", "test")] == [2, 2, 2]
    five = data.read_image_folder(orl_folder(tmp_path / "five", 5), image_size=8, verbose=False,
                                  cache_dir=tmp_path / "cache")  # fmt: skip
    with pytest.raises(data.ImageFolderError, match="5 classes; a split by class needs at least 6"):
        data.split_classes(five)
    with pytest.raises(data.ImageFolderError, match="leaves too few for training"):
        data.split_classes(orl_small, fractions=(0.0, 0.5, 0.5))
    with pytest.raises(ValueError, match="fractions must be 3 non-negative shares summing to 1"):
        data.split_classes(orl_small, fractions=(0.5, 0.2, 0.2))
    with pytest.raises(data.ImageFolderError, match="needs a two-level folder"):
        data.split_classes(orl_small, by="group")


def grouped_faces(root: pathlib.Path, groups: dict[str, int]) -> pathlib.Path:
    """``root/<group>/s<k>/<n>.png``: consecutive ORL people, two photographs each, by group."""
    person = 0
    for group, people in groups.items():
        for _ in range(people):
            person += 1
            for number in (1, 2):
                save(root / group / f"s{person}" / f"{number}.png", tiny(person, number))
    return root


def test_split_by_group(omniglot_folder, tmp_path):
    split = data.split_classes(omniglot_folder)
    assert split["by"] == "group"
    groups = {
        part: {name.split("/")[0] for name in split[part]}
        for part in ("train", "validation", "test")
    }
    assert all(len(g) == 1 for g in groups.values())
    assert set.union(*groups.values()) == {"Balinese", "Greek", "Latin"}
    assert sum(len(split[part]) for part in groups) == 12  # every class of each group

    cache = tmp_path / "cache"
    two = data.read_image_folder(grouped_faces(tmp_path / "two", {"g1": 4, "g2": 4}),
                                 image_size=8, cache_dir=cache, verbose=False)  # fmt: skip
    assert data.split_classes(two)["by"] == "class"  # auto: too few groups
    with pytest.raises(data.ImageFolderError, match="2 groups; a split by group needs at least 3"):
        data.split_classes(two, by="group")
    lonely = data.read_image_folder(grouped_faces(tmp_path / "lonely", {"g1": 1, "g2": 1, "g3": 1}),
                                    image_size=8, cache_dir=cache, verbose=False)  # fmt: skip
    with pytest.raises(
        data.ImageFolderError, match="gets 1 class of its groups; every set needs at least 2"
    ):
        data.split_classes(lonely)


def test_split_file_round_trip_and_errors(orl_small, tmp_path, capsys):
    split = data.split_classes(orl_small, seed=1)
    path = tmp_path / "split.json"
    data.write_split(split, path)
    assert data.read_split(path, orl_small) == split
    assert not list(tmp_path.glob(".*partial*"))
    with pytest.raises(TypeError, match="not a split: 'test'"):
        data.write_split({"train": [], "validation": []}, tmp_path / "other.json")

    def written(content) -> pathlib.Path:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return path

    with pytest.raises(data.ImageFolderError, match="nope.json: cannot read the split file"):
        data.read_split(tmp_path / "nope.json", orl_small)
    with pytest.raises(data.ImageFolderError, match="split.json: not a JSON split file"):
        data.read_split(written("{train"), orl_small)
    with pytest.raises(data.ImageFolderError, match="'test' is missing"):
        data.read_split(written({"train": [], "validation": []}), orl_small)
    overlapping = dict(split, test=split["test"] + split["train"][:1])
    with pytest.raises(data.ImageFolderError, match="1 classes are in both 'train' and 'test'"):
        data.read_split(written(overlapping), orl_small)
    unknown = dict(split, test=split["test"] + ["s99"])
    with pytest.raises(data.ImageFolderError, match=r"1 classes are not in the folder .*\['s99'\]"):
        data.read_split(written(unknown), orl_small)
    with pytest.raises(data.ImageFolderError, match="not in the folder"):
        data.apply_split(orl_small, unknown)

    capsys.readouterr()
    partial = dict(split, train=split["train"][3:])
    assert data.read_split(written(partial), orl_small) == partial
    assert "3 of the folder's 40 classes are in no set of the split and are left out" in (
        capsys.readouterr().out
    )
    assert len(data.apply_split(orl_small, partial)["train"]) == 2 * 21
