"""List MVTec-AD-style datasets and plain image folders as `Sample` records (no pixels are read here)."""

from __future__ import annotations

import os
from pathlib import Path

from normalcy.data.images import PathLike, _require_dir, _visible_entries, image_files, list_images
from normalcy.data.samples import ANOMALOUS, NORMAL, UNKNOWN, Sample
from normalcy.errors import EmptyFolderError, LayoutError, MissingMaskError

GOOD = "good"
MASK_SUFFIX = "_mask.png"
LAYOUT_HELP = (
    "expected the MVTec AD layout: <category>/train/good/ (normal training images), "
    "<category>/test/<type>/ (test images: 'good' for normal ones, one folder per defect type) and, "
    "optionally, <category>/ground_truth/<type>/<stem>_mask.png (one mask per defective test image)"
)


def _subfolders(folder: Path) -> list[Path]:
    """Sorted visible sub-folders of a folder."""
    return sorted(folder / e.name for e in _visible_entries(folder) if e.is_dir())


def _has_train_good(folder: Path) -> bool:
    """True if the folder looks like one MVTec category (has train/good)."""
    return (folder / "train" / GOOD).is_dir()


def _layout_hint(folder: Path) -> str:
    """Say what is found instead of train/good, so the user sees how far off the layout is."""
    if (folder / "train").is_dir():
        found = [p.name for p in _subfolders(folder / "train")] or ["nothing"]
        return f"{folder / 'train'} exists but holds {', '.join(found)} instead of a 'good' folder"
    names = [p.name for p in _subfolders(folder)]
    return f"sub-folders found: {', '.join(names[:8])}" if names else "it has no sub-folders"


def find_categories(root: PathLike) -> list[Path]:
    """Category folders under an MVTec root ([root] if root is itself a category), for batch benchmarks."""
    base = _require_dir(root)
    if _has_train_good(base):
        return [base]
    found = [d for d in _subfolders(base) if _has_train_good(d)]
    if not found:
        raise LayoutError(
            f"no MVTec category in {base}: neither it nor any sub-folder has train/good "
            f"({_layout_hint(base)}); {LAYOUT_HELP}"
        )
    return found


def _train_folder(root: Path) -> Path:
    """root/train/good, or LayoutError explaining the layout (and spotting a multi-category root)."""
    good = root / "train" / GOOD
    if good.is_dir():
        return good
    categories = [d.name for d in _subfolders(root) if _has_train_good(d)]
    if categories:
        raise LayoutError(
            f"{root} has no train/good but looks like an MVTec root holding the categories "
            f"{', '.join(categories)}; load one category folder at a time (find_categories lists them)"
        )
    raise LayoutError(f"{good} not found ({_layout_hint(root)}); {LAYOUT_HELP}")


def _test_type_folders(root: Path) -> list[Path]:
    """The sub-folders of root/test, refusing loose images that would otherwise be silently ignored."""
    test = root / "test"
    if not test.is_dir():
        raise LayoutError(f"{test} not found; {LAYOUT_HELP}")
    loose = image_files(test)
    if loose:
        raise LayoutError(
            f"{test} holds {len(loose)} image(s) directly (e.g. {loose[0].name}); test images must sit in "
            "sub-folders: test/good for normal ones, test/<defect_type> for defective ones"
        )
    return _subfolders(test)


def _mask_names(folder: Path) -> set[str]:
    """File names in one ground_truth/<type> folder (one listing instead of a stat per image)."""
    if not folder.is_dir():
        return set()
    with os.scandir(folder) as entries:
        return {e.name for e in entries}


def _missing_mask_error(missing: list[tuple[Path, Path]], gt: Path) -> MissingMaskError:
    """Build the MissingMaskError for the first defective image without a mask (and count the others)."""
    image, mask = missing[0]
    msg = (
        f"defective test image {image} has no mask: expected {mask}, because {gt} exists and then every "
        "defective image needs <stem>_mask.png; add the mask, or remove the ground_truth folder to skip "
        "pixel-level metrics"
    )
    if (mask.parent / image.name).is_file():
        msg += f" (found {mask.parent / image.name}: masks must be named <stem>{MASK_SUFFIX})"
    if len(missing) > 1:
        msg += f"; {len(missing) - 1} more defective image(s) lack masks too"
    return MissingMaskError(msg)


def _type_samples(
    folder: Path, category: str, gt: Path | None
) -> tuple[list[Sample], list[tuple[Path, Path]]]:
    """Samples of one test/<type> folder and the (image, expected mask) pairs whose mask is missing."""
    images = image_files(folder)
    if folder.name == GOOD:
        return [Sample(p, NORMAL, GOOD, None, category) for p in images], []
    if gt is None:
        return [Sample(p, ANOMALOUS, folder.name, None, category) for p in images], []
    mask_dir = gt / folder.name
    present = _mask_names(mask_dir)
    samples, missing = [], []
    for path in images:
        mask = mask_dir / f"{path.stem}{MASK_SUFFIX}"
        samples.append(Sample(path, ANOMALOUS, folder.name, mask, category))
        if mask.name not in present:
            missing.append((path, mask))
    return samples, missing


def _test_samples(root: Path, category: str) -> list[Sample]:
    """All test samples of one category, checking that every defective image has its mask when masks exist."""
    gt = root / "ground_truth"
    gt = gt if gt.is_dir() else None
    samples: list[Sample] = []
    missing: list[tuple[Path, Path]] = []
    for folder in _test_type_folders(root):
        found, lacking = _type_samples(folder, category, gt)
        samples.extend(found)
        missing.extend(lacking)
    if not samples:
        raise EmptyFolderError(f"no test images in the sub-folders of {root / 'test'}; {LAYOUT_HELP}")
    if missing and gt is not None:
        raise _missing_mask_error(missing, gt)
    return samples


def load_mvtec(path: PathLike) -> tuple[list[Sample], list[Sample]]:
    """List one MVTec-layout category as (train, test) samples; fast: only names are checked, no pixels."""
    root = _require_dir(path)
    category = root.name
    train = [Sample(p, NORMAL, GOOD, None, category) for p in list_images(_train_folder(root))]
    return train, _test_samples(root, category)


def load_folder(path: PathLike, recursive: bool = False) -> list[Sample]:
    """List a plain folder of unlabelled images (label -1), e.g. new images to score."""
    return [Sample(p, UNKNOWN, "", None, "") for p in list_images(path, recursive=recursive)]
