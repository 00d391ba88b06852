"""ONNX export: torch and onnxruntime agree, the file carries its metadata, and bad inputs fail clearly."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

import normalcy  # noqa: E402
from normalcy.apps.cli import main  # noqa: E402
from normalcy.apps.export import ONNX_FORMAT, export_onnx, load_onnx  # noqa: E402
from normalcy.apps.export.onnx_export import META_KEY  # noqa: E402
from normalcy.errors import MissingDependencyError, ModelFileError, NotFittedError, ParameterError  # noqa: E402

# alpha/calibration_fraction chosen so one hold-out split can flag images: one fit per detector, masks non-empty
SMALL = {"image_size": 64, "progress": False, "alpha": 0.3, "calibration_fraction": 0.5}
MODES = {"patchcore": "stretch", "padim": "pad", "gaussian": "pad"}  # pad exercises the `valid` input
EXTRA = {"patchcore": {"border": 0.25}}  # 2 of 8 cells: the image score's border band must match too


@pytest.fixture(scope="module")
def exported(normal_images, tmp_path_factory):
    """Each exportable detector fitted small, exported, and reopened with onnxruntime."""
    out = {}
    root = tmp_path_factory.mktemp("onnx")
    for name, mode in MODES.items():
        det = normalcy.create_detector(name, resize_mode=mode, **SMALL, **EXTRA.get(name, {})).fit(normal_images)
        path = export_onnx(det, root / f"{name}.onnx")
        out[name] = (det, path, load_onnx(path, threads=1))
    return out


def mixed_images(test_images) -> list[np.ndarray]:
    """The fixture's test images, half of them cropped to a non-square shape."""
    images, _ = test_images
    return [img if i % 2 == 0 else img[8:56] for i, img in enumerate(images)]


def tolerance(det) -> float:
    """1e-4 of the model's typical normal score: float32 leaves ~1e-7 relative error per operation."""
    return 1e-4 * max(1.0, float(np.median(det.calibration_.scores)))


@pytest.mark.parametrize("name", list(MODES))
def test_scores_and_maps_match_torch(name, exported, test_images):
    det, _, onnx_model = exported[name]
    images = mixed_images(test_images)
    a, b = det.score(images), onnx_model.score(images)
    tol = tolerance(det)
    np.testing.assert_allclose(b.scores, a.scores, rtol=0, atol=tol)
    assert (a.maps is None) == (b.maps is None) == (name == "gaussian")
    for ma, mb, img in zip(a.maps or [], b.maps or [], images):
        assert mb.shape == ma.shape == img.shape[:2]
        np.testing.assert_allclose(mb, ma, rtol=0, atol=tol)


@pytest.mark.parametrize("name", list(MODES))
def test_predictions_match_torch(name, exported, test_images):
    det, _, onnx_model = exported[name]
    images = mixed_images(test_images)
    pa, pb = det.predict(images), onnx_model.predict(images)
    assert [p.p_value for p in pb] == [p.p_value for p in pa]
    assert [p.severity for p in pb] == [p.severity for p in pa]
    assert [p.is_anomaly for p in pb] == [p.is_anomaly for p in pa]
    assert any(p.is_anomaly for p in pa), "fixture should flag some images so masks are compared"
    for x, y in zip(pa, pb):
        if x.mask is not None:
            assert np.mean(x.mask != y.mask) <= 1e-3  # only pixels within float error of the threshold may differ


def test_batch_dimension_is_dynamic(exported, test_images):
    _, _, onnx_model = exported["patchcore"]
    images, _ = test_images
    one_by_one = np.concatenate([onnx_model.score([img]).scores for img in images[:3]])
    together = onnx_model.score(images[:3]).scores
    # float32 products are blocked differently for 1 and 3 images: equal to rounding, not bit for bit
    np.testing.assert_allclose(together, one_by_one, rtol=1e-5, atol=1e-6)


def test_metadata_inside_the_file(exported):
    det, path, _ = exported["padim"]
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    meta = json.loads(props[META_KEY])
    assert meta["format"] == ONNX_FORMAT and meta["detector"] == "padim"
    assert meta["normalcy_version"] == normalcy.__version__
    assert meta["image_size"] == 64 and meta["params"]["resize_mode"] == "pad"
    np.testing.assert_array_equal(meta["calibration"]["scores"], det.calibration_.scores)
    np.testing.assert_array_equal(meta["calibration"]["pixel_quantiles"], det.calibration_.pixel_quantiles)
    assert meta["backbone"]["weights_sha256"] == det.extractor.backbone_sha256


def test_other_format_version_rejected(exported, tmp_path):
    _, path, _ = exported["gaussian"]
    proto = onnx.load(str(path))
    meta = json.loads(proto.metadata_props[0].value)
    meta["format_version"] = 99
    proto.metadata_props[0].value = json.dumps(meta)
    onnx.save(proto, str(tmp_path / "future.onnx"))
    with pytest.raises(ModelFileError, match="format version 99"):
        load_onnx(tmp_path / "future.onnx")


def test_foreign_and_broken_files_rejected(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "other.onnx"))
    with pytest.raises(ModelFileError, match="not a normalcy model"):
        load_onnx(tmp_path / "other.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(ModelFileError, match="not a readable ONNX model"):
        load_onnx(tmp_path / "junk.onnx")
    with pytest.raises(ModelFileError, match="not found"):
        load_onnx(tmp_path / "missing.onnx")


def test_unexportable_detectors_named(exported, tmp_path):
    with pytest.raises(ParameterError, match=r"'musc' cannot be exported.*patchcore, padim, gaussian"):
        export_onnx(normalcy.create_detector("musc"), tmp_path / "m.onnx")
    with pytest.raises(NotFittedError):
        export_onnx(normalcy.PatchCore(), tmp_path / "m.onnx")
    det, _, _ = exported["patchcore"]
    det.set_params(reweight=True)
    try:
        with pytest.raises(ParameterError, match="reweight"):
            export_onnx(det, tmp_path / "m.onnx")
    finally:
        det.set_params(reweight=False)
    assert not (tmp_path / "m.onnx").exists()


def test_ivf_search_exported_with_the_same_lists_and_probes(normal_images, test_images, tmp_path):
    """A PatchCore that searches its own IVF index (the default for banks over 16,384 rows) exports that search:
    the ONNX model finds the same neighbours as torch, including the ones approximate search misses."""
    ivf = {**SMALL, "image_size": 128, "n_probe": 1, "coreset_ratio": 1.0}  # 16×16 cells: a bank of several lists
    det = normalcy.PatchCore(search="ivf", **ivf).fit(normal_images)
    assert det._index.centroids.shape[0] >= 3  # several lists, one probed: truly approximate
    path = export_onnx(det, tmp_path / "ivf.onnx")
    onnx_model = load_onnx(path, threads=1)
    assert onnx_model.model_meta_["search"] == "ivf"
    images = mixed_images(test_images)
    a, b = det.score(images), onnx_model.score(images)
    tol = tolerance(det)
    np.testing.assert_allclose(b.scores, a.scores, rtol=0, atol=tol)
    for ma, mb in zip(a.maps, b.maps):
        np.testing.assert_allclose(mb, ma, rtol=0, atol=tol)
    exact = normalcy.PatchCore(search="exact", **ivf).fit(normal_images)
    assert torch.equal(exact.memory_bank_.sort(0).values, det.memory_bank_.sort(0).values)  # the same bank ...
    gap = max(float(np.max(ma - me)) for ma, me in zip(a.maps, exact.score(images).maps))
    assert gap > 10 * tol  # ... and the IVF search (torch and ONNX alike) misses some nearest neighbours
    assert [p.is_anomaly for p in onnx_model.predict(images)] == [p.is_anomaly for p in det.predict(images)]


def test_faiss_search_exported_exact_with_warning(normal_images, test_images, tmp_path):
    pytest.importorskip("faiss")
    det = normalcy.PatchCore(search="faiss-ivf", **SMALL).fit(normal_images[:6])
    with pytest.warns(UserWarning, match="faiss"):
        path = export_onnx(det, tmp_path / "faiss.onnx")
    images, _ = test_images
    exact = load_onnx(path, threads=1).score(images).scores
    assert np.all(exact <= det.score(images).scores + tolerance(det))  # exact search never finds a farther patch


def test_bank_too_large_for_one_file_refused(exported, tmp_path, monkeypatch):
    import normalcy.apps.export.graph as graph

    monkeypatch.setattr(graph, "MAX_BYTES", 1000)
    with pytest.raises(ParameterError, match="larger than one ONNX file"):
        export_onnx(exported["patchcore"][0], tmp_path / "big.onnx")
    assert not (tmp_path / "big.onnx").exists()


def test_missing_onnxruntime_says_how_to_install(exported, monkeypatch):
    _, path, _ = exported["padim"]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'normalcy\[onnx\]'"):
        load_onnx(path)


def test_cli_export_then_predict_matches_torch(exported, tmp_path):
    from PIL import Image

    det, _, _ = exported["patchcore"]
    model = det.save(tmp_path / "m.normalcy")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(5)
    for i in range(4):
        pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) if i == 3 else det_image(i)
        Image.fromarray(pixels).save(images / f"{i}.png")
    assert main(["export", str(model), "-o", str(tmp_path / "m.onnx")]) == 0
    assert main(["predict", str(model), str(images), "-o", str(tmp_path / "torch"), "--images"]) == 0
    assert main(["--threads", "1", "predict", str(tmp_path / "m.onnx"), str(images), "-o", str(tmp_path / "ort"),
                 "--images"]) == 0
    rows_t, rows_o = read_rows(tmp_path / "torch"), read_rows(tmp_path / "ort")
    assert [r["path"] for r in rows_o] == [r["path"] for r in rows_t] and len(rows_o) == 4
    np.testing.assert_allclose([float(r["score"]) for r in rows_o], [float(r["score"]) for r in rows_t],
                               rtol=0, atol=tolerance(det))
    for key in ("p_value", "is_anomaly", "severity"):
        assert [r[key] for r in rows_o] == [r[key] for r in rows_t]
    assert rows_o[3]["is_anomaly"] == "True" and (tmp_path / "ort" / rows_o[3]["overlay"]).is_file()
    with pytest.raises(ParameterError, match="backbone features are not exposed"):  # what e.g. --gallery needs
        _ = load_onnx(tmp_path / "m.onnx").extractor
    (tmp_path / "plain.onnx").write_bytes(b"junk")
    assert main(["predict", str(tmp_path / "plain.onnx"), str(images), "-o", str(tmp_path / "x")]) == 2


def det_image(seed: int) -> np.ndarray:
    """A normal-looking texture like the training fixture's."""
    from conftest import texture

    return texture(np.random.default_rng(100 + seed))


def read_rows(folder) -> list[dict[str, str]]:
    with open(folder / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))
