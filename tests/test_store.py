"""Model files: bit-identical round trip, and one clear error for truncated, tampered or foreign files."""

from __future__ import annotations

import json

import numpy as np
import pytest

import normalcy
from normalcy.errors import ModelFileError
from normalcy.store import META_HASH_KEY, META_KEY, _text_digest

SMALL = {"image_size": 64, "progress": False}


@pytest.fixture(scope="module")
def fitted(normal_images):
    return normalcy.PatchCore(**SMALL).fit(normal_images)


@pytest.mark.parametrize("name", ["patchcore", "padim", "gaussian"])
def test_round_trip_bit_identical(name, normal_images, test_images, tmp_path):
    images, _ = test_images
    det = normalcy.create_detector(name, **SMALL).fit(normal_images)
    path = det.save(tmp_path / "m.normalcy")
    back = normalcy.load(path)
    a, b = det.score(images), back.score(images)
    np.testing.assert_array_equal(a.scores, b.scores)
    if a.maps is not None:
        for x, y in zip(a.maps, b.maps):
            np.testing.assert_array_equal(x, y)
    assert back.get_params() == det.get_params()
    np.testing.assert_array_equal(back.calibration_.scores, det.calibration_.scores)
    assert [p.is_anomaly for p in back.predict(images)] == [p.is_anomaly for p in det.predict(images)]


def test_truncated_file(fitted, tmp_path):
    path = fitted.save(tmp_path / "m.normalcy")
    data = path.read_bytes()
    (tmp_path / "cut.normalcy").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        normalcy.load(tmp_path / "cut.normalcy")


def test_tampered_tensor(fitted, tmp_path):
    path = fitted.save(tmp_path / "m.normalcy")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the last tensor's bytes
    (tmp_path / "bad.normalcy").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum"):
        normalcy.load(tmp_path / "bad.normalcy")


def test_foreign_and_missing_files(tmp_path):
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelFileError, match="not a normalcy model"):
        normalcy.load(tmp_path / "other.safetensors")
    (tmp_path / "text.normalcy").write_text("hello")
    with pytest.raises(ModelFileError):
        normalcy.load(tmp_path / "text.normalcy")
    with pytest.raises(ModelFileError, match="not found"):
        normalcy.load(tmp_path / "missing.normalcy")


def test_format_version_and_backbone_hash_checked(fitted, tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    path = fitted.save(tmp_path / "m.normalcy")
    with safe_open(str(path), framework="np") as f:
        meta = json.loads(f.metadata()[META_KEY])
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    for change, msg in (({"format_version": 99}, "format version"),
                        ({"backbone": {"name": "efficientnet_lite0", "weights_sha256": "0" * 64}}, "hash")):
        text = json.dumps({**meta, **change})  # re-signed: this checks the version and backbone tests themselves
        save_file(arrays, str(tmp_path / "v.normalcy"), metadata={META_KEY: text, META_HASH_KEY: _text_digest(text)})
        with pytest.raises(ModelFileError, match=msg):
            normalcy.load(tmp_path / "v.normalcy")


def test_atomic_write_leaves_no_temp_files(fitted, tmp_path):
    fitted.save(tmp_path / "m.normalcy")
    fitted.save(tmp_path / "m.normalcy")  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.normalcy"]
