"""Readers, folder listing and MVTec layout: every conversion and every bad-input error, on tiny files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from normalcy.data import (
    IMAGE_EXTENSIONS,
    Sample,
    as_rgb_array,
    find_categories,
    iter_batches,
    list_images,
    load_folder,
    load_mvtec,
    read_image,
    read_mask,
)
from normalcy.errors import (
    CorruptImageError,
    DataError,
    EmptyFolderError,
    LayoutError,
    MaskMismatchError,
    MissingMaskError,
    ParameterError,
    PathNotFoundError,
    ShapeError,
)

RGB = np.array(
    [[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[10, 20, 30], [40, 50, 60], [70, 80, 90]]], np.uint8
)


def save(img: Image.Image, path: Path, **kwargs) -> Path:
    """Save a PIL image, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def check_rgb(arr: np.ndarray, shape: tuple[int, int]) -> None:
    """Assert the common reader contract: H x W x 3 uint8."""
    assert arr.dtype == np.uint8
    assert arr.shape == (*shape, 3)


# --- read_image: every conversion -----------------------------------------------------------------------
def test_rgb_png_roundtrip(tmp_path):
    out = read_image(save(Image.fromarray(RGB), tmp_path / "a.png"))
    check_rgb(out, (2, 3))
    np.testing.assert_array_equal(out, RGB)


def test_gray_is_repeated_into_three_channels(tmp_path):
    gray = np.array([[0, 100, 255]], np.uint8)
    out = read_image(save(Image.fromarray(gray), tmp_path / "g.png"))
    check_rgb(out, (1, 3))
    np.testing.assert_array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))


def test_one_bit_image(tmp_path):
    img = Image.fromarray(np.array([[False, True]]))
    assert img.mode == "1"
    out = read_image(save(img, tmp_path / "b.png"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 255])


def test_rgba_drops_alpha_keeping_stored_colour(tmp_path):
    rgba = np.dstack([RGB, np.array([[0, 128, 255], [255, 255, 0]], np.uint8)])
    out = read_image(save(Image.fromarray(rgba), tmp_path / "a.png"))
    np.testing.assert_array_equal(out, RGB)


def test_gray_with_alpha(tmp_path):
    la = Image.fromarray(np.array([[[7, 0], [200, 255]]], np.uint8), mode="LA")
    out = read_image(save(la, tmp_path / "la.png"))
    np.testing.assert_array_equal(out[0, :, 1], [7, 200])


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 0
    out = read_image(save(img, tmp_path / "p.png", transparency=0))
    np.testing.assert_array_equal(out[0], [[255, 0, 0], [0, 0, 255]])


def test_16bit_png_scaled_by_dtype_max_not_min_max(tmp_path):
    values = np.array([[0, 32768, 65535], [1000, 2000, 3000]], np.uint16)
    out = read_image(save(Image.fromarray(values), tmp_path / "d.png"))
    check_rgb(out, (2, 3))
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255])
    # A faint image stays faint: per-image min/max stretching would have produced 0..255 here.
    np.testing.assert_array_equal(out[1, :, 0], [4, 8, 12])


def test_cmyk_becomes_rgb(tmp_path):
    img = Image.new("CMYK", (2, 2), (0, 0, 0, 0))
    out = read_image(save(img, tmp_path / "c.tif"))
    check_rgb(out, (2, 2))
    assert (out == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    out = read_image(save(Image.fromarray(RGB), tmp_path / "r.png", exif=exif))
    assert out.shape == (3, 2, 3)
    np.testing.assert_array_equal(out, np.rot90(RGB, k=-1))


def test_uppercase_extension_is_read_and_listed(tmp_path):
    save(Image.fromarray(RGB), tmp_path / "UP.PNG")
    assert [p.name for p in list_images(tmp_path)] == ["UP.PNG"]
    check_rgb(read_image(tmp_path / "UP.PNG"), (2, 3))


# --- read_image: bad files ------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(PathNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png")
    assert issubclass(PathNotFoundError, FileNotFoundError)


def test_text_file_named_png(tmp_path):
    path = tmp_path / "fake.png"
    path.write_text("not an image")
    with pytest.raises(CorruptImageError, match=str(path)):
        read_image(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path, fmt):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format=fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(CorruptImageError, match="cut") as info:
        read_image(path)
    assert str(path) in str(info.value)
    with pytest.raises(CorruptImageError):
        read_mask(path)


def test_folder_given_as_image(tmp_path):
    with pytest.raises(CorruptImageError, match="folder"):
        read_image(tmp_path)


def test_decompression_bomb_is_refused(tmp_path):
    path = save(Image.new("1", (11_000, 10_000)), tmp_path / "huge.png")  # 110 MP, a few kB on disk
    with pytest.raises(CorruptImageError, match="megapixel") as info:
        read_image(path)
    assert "huge.png" in str(info.value)


# --- as_rgb_array ---------------------------------------------------------------------------------------
def test_as_rgb_array_accepts_paths_samples_and_pil(tmp_path):
    path = save(Image.fromarray(RGB), tmp_path / "a.png")
    for item in (path, str(path), Sample(path, 0, "good"), Image.open(path), Image.fromarray(RGB)):
        np.testing.assert_array_equal(as_rgb_array(item), RGB)


def test_float_array():
    out = as_rgb_array(np.array([[0.0, 0.5, 1.0]], np.float32))
    check_rgb(out, (1, 3))
    np.testing.assert_array_equal(out[0, :, 2], [0, 128, 255])


def test_bool_array():
    out = as_rgb_array(np.array([[True, False]]))
    np.testing.assert_array_equal(out[0], [[255, 255, 255], [0, 0, 0]])


def test_uint16_single_channel_and_rgba_arrays():
    out = as_rgb_array(np.array([[[65535], [0]]], np.uint16))
    np.testing.assert_array_equal(out[0, :, 0], [255, 0])
    rgba = np.dstack([RGB, np.zeros((2, 3), np.uint8)])
    np.testing.assert_array_equal(as_rgb_array(rgba), RGB)


def test_uint8_array_is_copied():
    out = as_rgb_array(RGB)
    np.testing.assert_array_equal(out, RGB)
    assert not np.shares_memory(out, RGB)


@pytest.mark.parametrize(
    "arr",
    [
        np.array([[1.5, 0.0]]),
        np.array([[-0.1, 0.0]]),
        np.array([[np.nan, 0.0]]),
        np.zeros((2, 2, 2), np.uint8),
        np.zeros((2, 2, 3, 1), np.uint8),
        np.zeros((0, 4), np.uint8),
        np.zeros((2, 2), np.int64),
    ],
)
def test_bad_arrays(arr):
    with pytest.raises(ShapeError):
        as_rgb_array(arr)


def test_unsupported_item_type():
    with pytest.raises(ShapeError, match="list"):
        as_rgb_array([[0, 1]])


# --- read_mask ------------------------------------------------------------------------------------------
def test_read_mask_any_mode(tmp_path):
    expected = np.array([[False, True, True]])
    gray = save(Image.fromarray(np.array([[0, 1, 255]], np.uint8)), tmp_path / "l.png")
    rgb = save(
        Image.fromarray(np.array([[[0, 0, 0], [0, 0, 9], [255, 255, 255]]], np.uint8)), tmp_path / "c.png"
    )
    deep = save(Image.fromarray(np.array([[0, 1, 65535]], np.uint16)), tmp_path / "d.png")
    for path in (gray, rgb, deep):
        mask = read_mask(path, shape=(1, 3))
        assert mask.dtype == bool
        np.testing.assert_array_equal(mask, expected)


def test_mask_size_mismatch(tmp_path):
    path = save(Image.fromarray(np.zeros((4, 5), np.uint8)), tmp_path / "x_mask.png")
    with pytest.raises(MaskMismatchError) as info:
        read_mask(path, shape=(8, 8))
    message = str(info.value)
    assert str(path) in message and "4x5" in message and "8x8" in message


# --- folders and batches --------------------------------------------------------------------------------
def test_list_images_sorted_filtered(tmp_path):
    for name in ("b.png", "a.JPG", "c.webp", ".hidden.png", "._a.png"):
        save(Image.fromarray(RGB), tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    save(Image.fromarray(RGB), tmp_path / "sub" / "d.bmp")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.webp"]
    assert [p.name for p in list_images(tmp_path, recursive=True)] == ["a.JPG", "b.png", "c.webp", "d.bmp"]
    assert all(p.is_absolute() for p in list_images(tmp_path))


def test_list_images_errors(tmp_path):
    with pytest.raises(PathNotFoundError, match="missing"):
        list_images(tmp_path / "missing")
    with pytest.raises(EmptyFolderError, match="empty") as info:
        list_images(tmp_path)
    assert str(tmp_path) in str(info.value) and ".png" in str(info.value)
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(EmptyFolderError, match="a.txt"):
        list_images(tmp_path)
    with pytest.raises(LayoutError):
        list_images(tmp_path / "a.txt")
    save(Image.fromarray(RGB), tmp_path / "sub" / "x.png")
    with pytest.raises(EmptyFolderError, match="recursive=True"):
        list_images(tmp_path)


def test_image_extensions():
    assert set(IMAGE_EXTENSIONS) >= {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def test_iter_batches():
    assert list(iter_batches(list(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(iter_batches([], 4)) == []
    assert list(iter_batches("abc", 5)) == [["a", "b", "c"]]
    with pytest.raises(ParameterError):
        list(iter_batches([1], 0))


def test_all_errors_are_data_errors():
    for error in (PathNotFoundError, EmptyFolderError, LayoutError, CorruptImageError, MaskMismatchError):
        assert issubclass(error, DataError) and issubclass(error, ValueError)


# --- MVTec layout ---------------------------------------------------------------------------------------
def make_category(
    folder: Path, *, masks: bool = True, defects: tuple[str, ...] = ("scratch", "hole")
) -> Path:
    """A tiny MVTec category: 3 train, 2 test/good, 2 images per defect type, masks if asked."""
    tiny = Image.fromarray(np.full((8, 8, 3), 128, np.uint8))
    mask = Image.fromarray(np.pad(np.full((2, 2), 255, np.uint8), 3))
    for i in range(3):
        save(tiny, folder / "train" / "good" / f"{i:03d}.png")
    for kind in ("good", *defects):
        for i in range(2):
            save(tiny, folder / "test" / kind / f"{i:03d}.png")
            if masks and kind != "good":
                save(mask, folder / "ground_truth" / kind / f"{i:03d}_mask.png")
    return folder


def test_single_category(tmp_path):
    cat = make_category(tmp_path / "bottle")
    train, test = load_mvtec(cat)
    assert len(train) == 3 and {(s.label, s.defect_type, s.mask_path) for s in train} == {(0, "good", None)}
    assert all(s.category == "bottle" for s in train + test)
    good = [s for s in test if s.label == 0]
    bad = [s for s in test if s.label == 1]
    assert len(good) == 2 and all(s.defect_type == "good" and s.mask_path is None for s in good)
    assert sorted({s.defect_type for s in bad}) == ["hole", "scratch"] and len(bad) == 4
    for s in bad:
        assert s.mask_path == cat / "ground_truth" / s.defect_type / f"{s.path.stem}_mask.png"
        assert read_mask(s.mask_path, shape=read_image(s.path).shape[:2]).sum() == 4
    assert find_categories(cat) == [cat]


def test_root_with_several_categories(tmp_path):
    for name in ("screw", "bottle"):
        make_category(tmp_path / name)
    (tmp_path / "README").mkdir()
    assert find_categories(tmp_path) == [tmp_path / "bottle", tmp_path / "screw"]
    with pytest.raises(LayoutError, match="bottle, screw"):
        load_mvtec(tmp_path)


def test_find_categories_errors(tmp_path):
    with pytest.raises(PathNotFoundError):
        find_categories(tmp_path / "nothing")
    (tmp_path / "misc").mkdir()
    with pytest.raises(LayoutError, match="train/good"):
        find_categories(tmp_path)


def test_missing_train_good(tmp_path):
    cat = make_category(tmp_path / "c")
    (cat / "train" / "good").rename(cat / "train" / "ok")
    with pytest.raises(LayoutError, match="train/good|good") as info:
        load_mvtec(cat)
    assert "ground_truth" in str(info.value)


def test_empty_train_good(tmp_path):
    cat = make_category(tmp_path / "c")
    for path in (cat / "train" / "good").iterdir():
        path.unlink()
    with pytest.raises(EmptyFolderError, match="good"):
        load_mvtec(cat)


def test_missing_or_empty_test(tmp_path):
    cat = make_category(tmp_path / "c", defects=())
    for path in (cat / "test" / "good").iterdir():
        path.unlink()
    with pytest.raises(EmptyFolderError, match="test"):
        load_mvtec(cat)
    (cat / "test" / "good").rmdir()
    (cat / "test").rmdir()
    with pytest.raises(LayoutError, match="test"):
        load_mvtec(cat)


def test_loose_test_images_are_refused(tmp_path):
    cat = make_category(tmp_path / "c")
    save(Image.fromarray(RGB), cat / "test" / "stray.png")
    with pytest.raises(LayoutError, match="sub-folders"):
        load_mvtec(cat)


def test_defect_without_mask(tmp_path):
    cat = make_category(tmp_path / "c")
    missing = cat / "ground_truth" / "hole" / "001_mask.png"
    missing.unlink()
    with pytest.raises(MissingMaskError) as info:
        load_mvtec(cat)
    assert str(cat / "test" / "hole" / "001.png") in str(info.value)
    assert str(missing) in str(info.value)


def test_no_ground_truth_means_no_masks(tmp_path):
    cat = make_category(tmp_path / "c", masks=False)
    _, test = load_mvtec(cat)
    assert all(s.mask_path is None for s in test)
    assert sum(s.label for s in test) == 4


def test_mask_size_mismatch_in_dataset(tmp_path):
    cat = make_category(tmp_path / "c")
    save(Image.fromarray(np.zeros((4, 4), np.uint8)), cat / "ground_truth" / "hole" / "000_mask.png")
    _, test = load_mvtec(cat)  # listing stays fast: sizes are checked when masks are read
    sample = next(s for s in test if s.defect_type == "hole" and s.path.stem == "000")
    with pytest.raises(MaskMismatchError, match="000_mask.png"):
        read_mask(sample.mask_path, shape=read_image(sample.path).shape[:2])


def test_load_folder(tmp_path):
    for name in ("b.png", "a.png"):
        save(Image.fromarray(RGB), tmp_path / name)
    samples = load_folder(tmp_path)
    assert [s.path.name for s in samples] == ["a.png", "b.png"]
    assert all(s.label == -1 and s.defect_type == "" and s.mask_path is None for s in samples)


def test_sample_rejects_bad_label(tmp_path):
    assert Sample(str(tmp_path / "a.png"), 1, "x").path == tmp_path / "a.png"
    with pytest.raises(ParameterError):
        Sample(tmp_path / "a.png", 2, "x")
