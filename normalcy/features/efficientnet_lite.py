"""EfficientNet-Lite in plain torch: the TF "lite" variant (ReLU6, no squeeze-excite, TF-SAME padding, fixed
stem/head) laid out with the lukemelas EfficientNet-PyTorch parameter names, so ported TF weights load as-is.

Why plain torch: torchvision/timm are not dependencies; the only thing we need from the outside world is a
weights file, which is loaded strictly (every key, every shape) so a wrong file can never half-load.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normalcy.errors import (
    BackboneError,
    ParameterError,
    ShapeError,
    WeightsMismatchError,
    WeightsNotFoundError,
)

BN_EPS = 1e-3  # TF BatchNormalization default, which the ported weights were trained with
# TF EfficientNet-Lite preprocessing is (pixel - 127) / 128 on 0-255 pixels; here for inputs in [0, 1].
LITE_MEAN: tuple[float, float, float] = (127.0 / 255.0,) * 3
LITE_STD: tuple[float, float, float] = (128.0 / 255.0,) * 3
_IGNORED_KEY_SUFFIX = "num_batches_tracked"  # BatchNorm bookkeeping, irrelevant for inference
_SHOW_KEYS = 5  # how many offending keys an error message names


@dataclass(frozen=True)
class StageArgs:
    """One stage of identical MBConv blocks (before width/depth scaling)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    channels: int


# EfficientNet-B0 / Lite0 stage table.
BASE_STAGES: tuple[StageArgs, ...] = (
    StageArgs(1, 3, 1, 1, 16),
    StageArgs(2, 3, 2, 6, 24),
    StageArgs(2, 5, 2, 6, 40),
    StageArgs(3, 3, 2, 6, 80),
    StageArgs(3, 5, 1, 6, 112),
    StageArgs(4, 5, 2, 6, 192),
    StageArgs(1, 3, 1, 6, 320),
)


@dataclass(frozen=True)
class LiteSpec:
    """Architecture hyper-parameters: width/depth multipliers plus the fixed (unscaled) stem/head sizes."""

    width: float = 1.0
    depth: float = 1.0
    stem_channels: int = 32
    head_channels: int = 1280
    num_classes: int = 1000
    stages: tuple[StageArgs, ...] = BASE_STAGES


@dataclass(frozen=True)
class BlockArgs:
    """One concrete MBConv block after scaling."""

    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    expand: int


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by `width` the way TF EfficientNet does (multiple of 8, never below 90%)."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a stage's block count by `depth` (TF rounds up)."""
    return int(math.ceil(depth * repeats))


def scaled_stages(spec: LiteSpec) -> tuple[StageArgs, ...]:
    """Apply the multipliers; Lite keeps the first and last stage at one block (TF `fix_head_stem`)."""
    last = len(spec.stages) - 1
    out = []
    for i, stage in enumerate(spec.stages):
        repeats = stage.repeats if i in (0, last) else round_repeats(stage.repeats, spec.depth)
        out.append(replace(stage, repeats=repeats, channels=round_filters(stage.channels, spec.width)))
    return tuple(out)


def block_plan(spec: LiteSpec) -> list[BlockArgs]:
    """Expand the scaled stages into one entry per block (only a stage's first block strides)."""
    plan: list[BlockArgs] = []
    in_ch = spec.stem_channels
    for stage in scaled_stages(spec):
        for r in range(stage.repeats):
            stride = stage.stride if r == 0 else 1
            plan.append(BlockArgs(in_ch, stage.channels, stage.kernel, stride, stage.expand))
            in_ch = stage.channels
    return plan


def feature_taps(spec: LiteSpec) -> dict[int, int]:
    """Map output stride -> index of the block that ends the LAST stage running at that stride."""
    taps: dict[int, int] = {}
    reduction, index = 2, -1  # the stem already halves the resolution
    for stage in scaled_stages(spec):
        reduction *= stage.stride
        index += stage.repeats
        taps[reduction] = index
    return taps


def same_pad(size: Sequence[int], kernel: int, stride: int) -> tuple[int, int, int, int]:
    """F.pad (left, right, top, bottom) for TF 'SAME': output ceil(in/stride), extra pad bottom/right."""
    pads: list[int] = []
    for n in (size[1], size[0]):  # width first, as F.pad expects
        total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return pads[0], pads[1], pads[2], pads[3]


class SameConv2d(nn.Conv2d):
    """Bias-free Conv2d with TF 'SAME' padding (at stride 1 that is the built-in symmetric padding)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        if kernel % 2 == 0:
            raise ParameterError(f"SameConv2d needs an odd kernel, got {kernel}")
        padding = kernel // 2 if stride == 1 else 0
        super().__init__(in_ch, out_ch, kernel, stride, padding=padding, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Pad asymmetrically only for strided convs, then convolve."""
        if self.stride[0] > 1:
            x = F.pad(x, same_pad(x.shape[-2:], self.kernel_size[0], self.stride[0]))
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with the TF epsilon the weights expect."""
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project (+ identity skip), ReLU6, no SE."""

    def __init__(self, args: BlockArgs) -> None:
        super().__init__()
        mid = args.in_channels * args.expand
        self.has_expand = args.expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(args.in_channels, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, args.kernel, args.stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, args.out_channels, 1)
        self._bn2 = _bn(args.out_channels)
        self.has_skip = args.stride == 1 and args.in_channels == args.out_channels

    def forward(self, x: Tensor) -> Tensor:
        """Run the block; the input tensor is never modified in place (callers may keep it as a feature)."""
        h = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if self.has_expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)), inplace=True)
        h = self._bn2(self._project_conv(h))
        return h + x if self.has_skip else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier whose `forward_features` stops at the deepest stage asked for."""

    def __init__(self, spec: LiteSpec | None = None) -> None:
        super().__init__()
        self.spec = spec = spec or LiteSpec()
        plan = block_plan(spec)
        self.mean, self.std = LITE_MEAN, LITE_STD
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        self.register_buffer("_norm_scale", 1.0 / std, persistent=False)
        self.register_buffer("_norm_shift", -torch.tensor(self.mean).view(1, 3, 1, 1) / std, persistent=False)
        self._conv_stem = SameConv2d(3, spec.stem_channels, 3, 2)
        self._bn0 = _bn(spec.stem_channels)
        self._blocks = nn.ModuleList(MBConvBlock(args) for args in plan)
        self._conv_head = SameConv2d(plan[-1].out_channels, spec.head_channels, 1)
        self._bn1 = _bn(spec.head_channels)
        self._fc = nn.Linear(spec.head_channels, spec.num_classes)
        self.feature_blocks: dict[int, int] = feature_taps(spec)
        taps = self.feature_blocks.items()
        self.stage_channels: dict[int, int] = {s: plan[i].out_channels for s, i in taps}
        self.name = "efficientnet_lite"
        self.inference_ready = False  # True after prepare_inference(): BN folded, channels_last
        self.weights_path: Path | None = None
        self.weights_sha256: str | None = None

    def normalize(self, x: Tensor) -> Tensor:
        """Map [0,1] RGB to the network's input range; checks shape/dtype so bad input fails loudly."""
        if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ShapeError(f"expected a float tensor B x 3 x H x W in [0,1], got {x.dtype} {tuple(x.shape)}")
        return torch.addcmul(self._norm_shift, x.to(self._norm_scale.dtype), self._norm_scale)

    def _stem(self, x: Tensor) -> Tensor:
        """Normalize, then stride-2 stem conv + BN + ReLU6."""
        x = self.normalize(x)
        if self.inference_ready:
            x = x.contiguous(memory_format=torch.channels_last)
        return F.relu6(self._bn0(self._conv_stem(x)), inplace=True)

    def _block_indices(self, strides: Sequence[int]) -> list[int]:
        """Validate requested output strides and return the matching block indices."""
        if isinstance(strides, int) or len(strides) == 0:
            raise ParameterError(f"strides must be a non-empty sequence of ints, got {strides!r}")
        unknown = [s for s in strides if s not in self.feature_blocks]
        if unknown:
            known = sorted(self.feature_blocks)
            raise ParameterError(f"unknown output stride(s) {unknown}; choose from {known}")
        return [self.feature_blocks[s] for s in strides]

    def _run_blocks(self, x: Tensor, wanted: Sequence[int]) -> dict[int, Tensor]:
        """Stem plus blocks up to the deepest wanted index; returns the wanted blocks' outputs."""
        keep = set(wanted)
        found: dict[int, Tensor] = {}
        h = self._stem(x)
        for i in range(max(wanted) + 1):
            h = self._blocks[i](h)
            if i in keep:
                found[i] = h
        return found

    def forward_features(self, x: Tensor, strides: Sequence[int]) -> list[Tensor]:
        """Feature maps at the end of each requested output-stride stage, in request order (no head/fc)."""
        wanted = self._block_indices(strides)
        found = self._run_blocks(x, wanted)
        return [found[i].contiguous() for i in wanted]  # plain NCHW even when running channels_last

    def forward(self, x: Tensor) -> Tensor:
        """ImageNet logits for [0,1] RGB input (pooled head + classifier)."""
        last = len(self._blocks) - 1
        h = self._run_blocks(x, (last,))[last]
        h = F.relu6(self._bn1(self._conv_head(h)), inplace=True)
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))

    def load_weights(self, path: str | Path) -> EfficientNetLite:
        """Load a state dict file strictly (every key used, shapes checked); remember where it came from."""
        if self.inference_ready:
            raise BackboneError("load_weights must run before prepare_inference() (BatchNorm is folded)")
        path = Path(path).expanduser()
        load_state_dict_strict(self, read_state_dict(path), source=path)
        self.weights_path = path
        return self

    def conv_bn_pairs(self) -> list[tuple[nn.Module, str, str]]:
        """(owner, conv attribute, BatchNorm attribute) for every conv followed by a BatchNorm."""
        pairs: list[tuple[nn.Module, str, str]] = [(self, "_conv_stem", "_bn0"), (self, "_conv_head", "_bn1")]
        for block in self._blocks:
            if block.has_expand:
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        return pairs

    @torch.no_grad()
    def prepare_inference(self) -> EfficientNetLite:
        """Freeze for fast inference: fold each BatchNorm into its conv, use channels_last (~2x on CPU)."""
        if not self.inference_ready:
            for owner, conv_name, bn_name in self.conv_bn_pairs():
                fold_batchnorm(getattr(owner, conv_name), getattr(owner, bn_name))
                setattr(owner, bn_name, nn.Identity())
            self.to(memory_format=torch.channels_last)
            self.inference_ready = True
        self.requires_grad_(False)
        return self.eval()


@torch.no_grad()
def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Rewrite `conv` in place so conv(x) == bn(conv(x)) in eval mode (computed in float64 for accuracy)."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    if conv.bias is not None:
        shift = shift + conv.bias.double() * scale
    dtype = conv.weight.dtype
    conv.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(dtype))
    conv.bias = nn.Parameter(shift.to(dtype), requires_grad=False)


def _describe(keys: Sequence[str]) -> str:
    """The first few keys of a list, plus how many were left out."""
    shown = ", ".join(keys[:_SHOW_KEYS])
    return shown + (f", ... (+{len(keys) - _SHOW_KEYS} more)" if len(keys) > _SHOW_KEYS else "")


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a .pth/.pt (weights_only) or .safetensors state dict; unreadable -> WeightsMismatchError."""
    if not path.is_file():
        raise WeightsNotFoundError(
            f"weights file {path} does not exist or is not a file "
            "(normalcy never downloads weights; pass a local .pth/.pt/.safetensors state dict)"
        )
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files surface as many different exception types
        detail = f"{type(exc).__name__}: {exc}"[:300]
        raise WeightsMismatchError(f"weights file {path} is corrupt or not a state dict ({detail})") from exc
    return _as_tensor_dict(state, path)


def _as_tensor_dict(state: object, path: Path) -> dict[str, Tensor]:
    """Insist on a flat name -> tensor mapping (not a training checkpoint or a pickled model)."""
    if not isinstance(state, Mapping):
        raise WeightsMismatchError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise WeightsMismatchError(
            f"weights file {path} is not a flat name->tensor state dict; non-tensor entries: {_describe(bad)}"
        )
    return dict(state)


def _is_ignored(key: str) -> bool:
    """Keys accepted when present or absent (BatchNorm's batch counter)."""
    return key.endswith(_IGNORED_KEY_SUFFIX)


def mismatch_report(module: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    """Human-readable problems between a module's parameters and a state dict (empty list = exact match)."""
    expected = {k: v for k, v in module.state_dict().items() if not _is_ignored(k)}
    given = {k: v for k, v in state.items() if not _is_ignored(k)}
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    common = [k for k in expected if k in given]
    shapes = [
        f"{k} {tuple(given[k].shape)} != expected {tuple(expected[k].shape)}"
        for k in common
        if given[k].shape != expected[k].shape
    ]
    dtypes = [
        f"{k} {given[k].dtype}" for k in common if given[k].is_floating_point() != expected[k].is_floating_point()
    ]
    non_finite = [k for k, v in given.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    problems = []
    checks = (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes), ("wrong dtype", dtypes))
    for label, keys in checks:
        if keys:
            problems.append(f"{len(keys)} {label} key(s): {_describe(keys)}")
    if non_finite:
        problems.append(f"{len(non_finite)} key(s) with NaN/inf values: {_describe(non_finite)}")
    return problems


def load_state_dict_strict(module: nn.Module, state: Mapping[str, Tensor], source: str | Path) -> None:
    """Copy `state` into `module` only if it matches exactly; otherwise raise WeightsMismatchError."""
    problems = mismatch_report(module, state)
    if problems:
        name = getattr(module, "name", type(module).__name__)
        raise WeightsMismatchError(f"weights file {source} does not match {name}: " + "; ".join(problems))
    module.load_state_dict({k: v for k, v in state.items() if not _is_ignored(k)}, strict=False)
