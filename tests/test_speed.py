"""Speed changes keep results: IVF search grouped by list, search mode by bank size, batched = one-by-one scores,
PNGs written in the background with rows kept in order, and batches read ahead in a thread."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from normalcy.apps import results
from normalcy.apps.results import predict_to_folder, prefetched
from normalcy.detectors.image.patchcore import EXACT_SEARCH_MAX, PatchCore
from normalcy.detectors.image.search import IVFIndex, nearest_neighbors


def test_ivf_finds_the_nearest_entry_of_the_probed_lists_with_its_exact_distance():
    g = torch.Generator().manual_seed(0)
    bank, q = torch.randn(3000, 24, generator=g), torch.randn(400, 24, generator=g)
    index = IVFIndex(bank, list_size=32, n_probe=3, seed=0)
    d, i = index.search(q)
    _, probes = nearest_neighbors(q, index.centroids, 3)
    for row in range(q.shape[0]):  # reference: brute force over the union of this query's probed lists
        members = torch.nonzero(torch.isin(index.assign, probes[row]))[:, 0]  # rows of `bank` (original order)
        dist = (bank[members] - q[row]).norm(dim=1)
        assert i[row] == members[dist.argmin()]
        assert abs(float(d[row]) - float(dist.min())) < 1e-4


def test_search_mode_is_exact_only_for_banks_small_enough():
    det = PatchCore()
    assert det._search_mode(EXACT_SEARCH_MAX) == "exact"
    assert det._search_mode(EXACT_SEARCH_MAX + 1) == "ivf"


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(rng.random((48, 40, 3)) * 255).astype(np.uint8) for _ in range(20)]


@pytest.mark.parametrize("search", ["exact", "ivf"])
def test_batched_predict_gives_the_one_by_one_scores_and_maps(images, search):
    det = PatchCore(image_size=48, search=search, progress=False, alpha=0.1, seed=0).fit(images[:14])
    det.batch_size = 6
    batched = det.predict(images[14:])
    det.batch_size = 1
    single = [det.predict([im])[0] for im in images[14:]]
    assert np.allclose([p.score for p in batched], [p.score for p in single], rtol=1e-5, atol=1e-5)
    assert all(np.allclose(a.anomaly_map, b.anomaly_map, rtol=1e-5, atol=1e-5) for a, b in zip(batched, single))
    assert [p.p_value for p in batched] == [p.p_value for p in single]


def _files(tmp_path: Path, n: int) -> list[Path]:
    out = []
    for k in range(n):
        arr = (np.random.default_rng(k).random((32, 32, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / f"{k:02d}.png")
        out.append(tmp_path / f"{k:02d}.png")
    return out


def test_background_pngs_keep_rows_in_order_and_a_failed_write_is_noted(images, tmp_path, monkeypatch):
    det = PatchCore(image_size=32, progress=False, alpha=0.1).fit(images[:12])
    files = _files(tmp_path, 7)
    real = results.ResultWriter._write_images

    def failing(self, stem, path, pred, image):
        if stem.startswith("00003"):
            raise OSError("disk full")
        return real(self, stem, path, pred, image)

    monkeypatch.setattr(results.ResultWriter, "_write_images", failing)
    n, failed = predict_to_folder(det, files, tmp_path / "out", batch=3)
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert (n, failed) == (7, 0) and [Path(r["path"]).name for r in rows] == [f.name for f in files]
    assert "disk full" in rows[3]["error"] and "overlay" not in rows[3]
    for r in rows[:3] + rows[4:]:
        assert (tmp_path / "out" / r["overlay"]).is_file() and (tmp_path / "out" / r["mask"]).is_file()


def test_prefetched_yields_the_same_items_in_order_and_raises_in_the_caller():
    assert list(prefetched(iter(range(5)))) == list(range(5))

    def broken():
        yield 1
        raise ValueError("unreadable")

    with pytest.raises(ValueError, match="unreadable"):
        list(prefetched(broken()))


def _restore_reference(maps, placements, size, sigma):
    """The step-by-step path restore_maps replaced: upsample to the canvas, blur, crop, resize."""
    import torch.nn.functional as F

    from normalcy.features.preprocess import canvas_hw, gaussian_blur

    up = gaussian_blur(F.interpolate(maps[:, None], size=canvas_hw(size), mode="bilinear", align_corners=False)[:, 0],
                       sigma)
    out = []
    for m, pl in zip(up, placements):
        inner = m[pl.top : pl.top + pl.inner_h, pl.left : pl.left + pl.inner_w]
        if (pl.inner_h, pl.inner_w) != (pl.height, pl.width):
            inner = F.interpolate(inner[None, None], size=(pl.height, pl.width), mode="bilinear",
                                  align_corners=False)[0, 0]
        out.append(inner.numpy())
    return out


@pytest.mark.parametrize(("size", "mode", "shapes", "sigma"), [
    ((96, 64), "stretch", [(93, 62), (50, 120)], 4.0), (64, "pad", [(50, 80), (64, 64)], 2.0),
    (32, "stretch", [(32, 32)], 0.0),
])
def test_restore_maps_by_axis_operators_equals_upsample_blur_crop_resize(size, mode, shapes, sigma):
    from normalcy.features.preprocess import canvas_hw, placement_for, restore_maps

    ch, cw = canvas_hw(size)
    maps = torch.randn(len(shapes), ch // 8, cw // 8, generator=torch.Generator().manual_seed(0))
    placements = [placement_for(h, w, size, mode) for h, w in shapes]
    got = restore_maps(maps, placements, size, sigma)
    ref = _restore_reference(maps, placements, size, sigma)
    assert [g.shape for g in got] == [r.shape for r in ref] == list(shapes)
    assert all(g.dtype == np.float32 and np.allclose(g, r, atol=1e-5) for g, r in zip(got, ref))


def test_ivf_search_in_query_chunks_equals_one_pass(monkeypatch):
    from normalcy.detectors.image import search

    g = torch.Generator().manual_seed(1)
    bank, q = torch.randn(2000, 16, generator=g), torch.randn(700, 16, generator=g)
    index = IVFIndex(bank, list_size=32, n_probe=4, seed=0)
    d_one, i_one = index.search(q)
    monkeypatch.setattr(search, "QUERY_PAIRS", 4 * 128)  # 128 queries at a time
    d_chunked, i_chunked = index.search(q)
    assert torch.equal(i_one, i_chunked) and torch.allclose(d_one, d_chunked)



@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc allocator settings only")
def test_keep_freed_memory_is_accepted_by_glibc_and_repeatable():
    from normalcy.apps.memory import keep_freed_memory

    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # the CLI may call it again (tests run several commands in one process)


def _dense_position_distances(feats, channels, mean, precision):
    """The reference: (x − μ)ᵀ·precision·(x − μ) per cell, in float64."""
    f = feats[:, channels].flatten(2).permute(0, 2, 1).double() - mean.double()[None]
    d2 = torch.einsum("bpc,pcd,bpd->bp", f, precision.double(), f).clamp(min=0)
    return d2.sqrt().reshape(feats.shape[0], *feats.shape[2:])


@pytest.mark.parametrize("batch", [1, 3])
def test_position_distances_by_cholesky_factor_equal_the_precision_form(batch):
    from normalcy.detectors.image.padim import fit_position_gaussian, position_distances, random_channels

    gen = torch.Generator().manual_seed(0)
    fit = [torch.randn(8, 12, 5, 4, generator=gen) * torch.linspace(0.2, 3.0, 12)[None, :, None, None]
           for _ in range(3)]
    chans = random_channels(12, 9, seed=0)
    mean, precision = fit_position_gaussian(fit, chans, 0.01)
    test = torch.randn(batch, 12, 5, 4, generator=gen) * 2.0
    got = position_distances(test, chans, mean, precision)
    assert got.shape == (batch, 5, 4) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), _dense_position_distances(test, chans, mean, precision).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_position_factor_is_cached_per_tensor_and_handles_a_singular_precision():
    from normalcy.detectors.image.padim import position_distances, position_factor

    gen = torch.Generator().manual_seed(1)
    a = torch.randn(3, 4, 4, generator=gen)
    precision = (a @ a.transpose(1, 2) + 0.1 * torch.eye(4)).float()
    precision[1] = torch.diag(torch.tensor([2.0, 1.0, 0.0, -1e-7]))  # not positive definite: eigen-factor instead
    assert position_factor(precision) is position_factor(precision)  # computed once per tensor
    assert position_factor(precision.clone()) is not position_factor(precision)
    feats = torch.randn(2, 4, 1, 3, generator=gen)
    chans, mean = torch.arange(4), torch.zeros(3, 4)
    np.testing.assert_allclose(position_distances(feats, chans, mean, precision).numpy(),
                               _dense_position_distances(feats, chans, mean, precision).numpy(), rtol=1e-5, atol=1e-5)


def test_predict_writes_overlays_only_when_asked():
    from normalcy.apps.cli.main import build_parser
    from normalcy.apps.cli.predict import wants_images

    parse = lambda *extra: build_parser().parse_args(["predict", "m.normalcy", "x.png", "-o", "out", *extra])  # noqa: E731
    assert not wants_images(parse()) and not wants_images(parse("--no-images"))  # --no-images: kept for scripts
    assert wants_images(parse("--images"))
    assert wants_images(parse("--narrator-url", "http://127.0.0.1:1/v1"))  # the narrator needs the overlays
    assert not wants_images(parse("--no-images", "--narrator-url", "http://127.0.0.1:1/v1"))
    with pytest.raises(SystemExit):
        parse("--images", "--no-images")
