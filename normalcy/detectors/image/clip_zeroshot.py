"""Zero-shot detection with CLIP text prompts (cf. WinCLIP, AnomalyCLIP): no normal image of the product is needed.

"Normal" and "abnormal" text prototypes are the mean CLIP text embeddings of a prompt ensemble (state phrases such
as "flawless {}" / "{} with defect" inside photo templates such as "a close-up photo of a {}.", with the object
name filled in). Each patch embedding of the image tower is compared with both prototypes; the softmax of the two
scaled cosine similarities gives the patch's abnormal probability, upsampled to the image as the anomaly map. The
image score mixes the image embedding's abnormal probability with the map's maximum (`global_weight`).

Patch tokens of CLIP's last layer match text poorly; with `dense_layers` = n > 0 they come from a second stream
with value-value attention in the last n blocks (CLIP Surgery / AnomalyCLIP's DPAM idea), which keeps them local.

Weights and the merges file come from local paths (`weights=`, `vocab=`; normalcy.features.clip): nothing is
downloaded, and no CLIP weights ship with normalcy. `fit()` needs no image; `fit(normal_images)` scores them (nothing
is learned from them) and keeps their scores for conformal calibration.

Model files (normalcy.store) keep the two text prototypes, the weights path and their sha256, not the weights
(hundreds of MB): loading checks the file at that path has the same hash; the merges file is not needed after fit.
Prompt sources are pluggable: a list of strings ("{}" is replaced by the object name) or a callable
object_name → list of strings; a callable is saved as the prompts it produced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
import torch.nn.functional as F

from normalcy.data.progress import progress_bar
from normalcy.detectors.base import ScoreResult
from normalcy.detectors.image.common import ImageDetector, masked_max
from normalcy.errors import ParameterError, WeightsMismatchError, WeightsNotFoundError
from normalcy.features.backbones import file_sha256
from normalcy.features.clip import ClipModel, load_clip
from normalcy.features.clip_tokenizer import ClipTokenizer
from normalcy.features.preprocess import prepare_batch, restore_maps, valid_grid

NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
                 "{} without damage", "intact {}")
ABNORMAL_STATES = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage", "cracked {}",
                   "scratched {}", "contaminated {}")
TEMPLATES = ("a photo of a {}.", "a close-up photo of a {}.", "a cropped photo of the {}.", "a bright photo of a {}.",
             "a dark photo of the {}.", "a blurry photo of the {}.", "a low resolution photo of the {}.",
             "a photo of the {} for visual inspection.", "an industrial photo of a {}.", "there is a {} in the scene.",
             "a jpeg corrupted photo of a {}.", "a photo of a {} on a plain background.")
RESIZE_MODES = ("stretch", "pad")
PromptSource = Sequence[str] | Callable[[str], Sequence[str]] | None


def ensemble(states: Sequence[str], object_name: str, templates: Sequence[str] = TEMPLATES) -> list[str]:
    """Every state phrase with the object name, inside every template (states × templates prompts)."""
    return [t.format(s.format(object_name)) for s in states for t in templates]


def resolve_prompts(source: PromptSource, default_states: Sequence[str], object_name: str, what: str) -> list[str]:
    """Prompt texts from a source: None → the built-in ensemble; strings ("{}" → object name); or a callable."""
    if source is None:
        return ensemble(default_states, object_name)
    texts = source(object_name) if callable(source) else source
    if isinstance(texts, str) or not isinstance(texts, Iterable):
        raise ParameterError(f"{what} must be a list of strings or a callable returning one, got "
                             f"{type(texts).__name__}")
    texts = list(texts)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ParameterError(f"{what} must hold at least one non-empty string, got {texts[:3]!r}")
    return [t.replace("{}", object_name) for t in texts]


@lru_cache(maxsize=1)
def _cached_model(path: str, stamp: tuple[int, int], vision_heads: int | None, text_heads: int | None,
                  quick_gelu: bool) -> ClipModel:
    """One loaded model per process (keyed by file, mtime/size and architecture options): clones and reloaded
    detector files reuse it instead of reading hundreds of MB again."""
    return load_clip(path, None, vision_heads, text_heads, quick_gelu)


class ClipZeroShot(ImageDetector):
    """CLIP patch embeddings scored against normal/abnormal text prototypes; no training images."""

    name = "clip"

    def __init__(
        self,
        weights: str | Path | None = None,
        vocab: str | Path | None = None,
        object_name: str = "object",
        normal_prompts: PromptSource = None,
        abnormal_prompts: PromptSource = None,
        image_size: int = 224,
        resize_mode: str = "stretch",
        dense_layers: int = 6,
        global_weight: float = 0.5,
        vision_heads: int | None = None,
        text_heads: int | None = None,
        quick_gelu: bool = True,
        sigma: float = 4.0,
        batch_size: int = 8,
        alpha: float = 0.05,
        pixel_fpr: float = 0.001,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self._store_params(locals())

    # ---- the model --------------------------------------------------------------------------------------------
    @property
    def extractor(self) -> ClipModel:
        """The CLIP model of `weights` (loaded once per process; `backbone_sha256` is its file hash)."""
        if self.weights is None:
            raise WeightsNotFoundError("the clip detector needs local CLIP weights: ClipZeroShot(weights=<.pt/.pth/"
                                       ".safetensors in the OpenAI CLIP layout>, vocab=<bpe_simple_vocab_16e6.txt.gz>);"
                                       " normalcy ships none and never downloads them")
        path = Path(self.weights).expanduser()
        stamp = (path.stat().st_mtime_ns, path.stat().st_size) if path.is_file() else (0, 0)
        return _cached_model(str(path), stamp, self.vision_heads, self.text_heads, bool(self.quick_gelu))

    @property
    def backbone(self) -> str:
        """A readable name of the architecture (model files record it with the weights hash)."""
        c = self.extractor.config
        return f"clip-vit patch {c.patch_size} width {c.vision_width} layers {c.vision_layers}"

    def _check_params(self, model: ClipModel) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ParameterError(f"resize_mode must be one of {RESIZE_MODES} for clip, got {self.resize_mode!r}")
        p = model.config.patch_size
        if int(self.image_size) < p or int(self.image_size) % p:
            raise ParameterError(f"image_size must be a multiple of the model's patch size {p} (e.g. "
                                 f"{model.config.image_resolution}), got {self.image_size}")
        if not 0.0 <= float(self.global_weight) <= 1.0:
            raise ParameterError(f"global_weight must be in [0, 1], got {self.global_weight}")
        if int(self.dense_layers) < 0:
            raise ParameterError(f"dense_layers must be >= 0, got {self.dense_layers}")

    # ---- fit: text prototypes; optional calibration images ----------------------------------------------------
    def prompt_texts(self) -> tuple[list[str], list[str]]:
        """The (normal, abnormal) prompts this detector encodes."""
        name = str(self.object_name).strip() or "object"
        return (resolve_prompts(self.normal_prompts, NORMAL_STATES, name, "normal_prompts"),
                resolve_prompts(self.abnormal_prompts, ABNORMAL_STATES, name, "abnormal_prompts"))

    def fit(self, X: Any = None, y: Any = None, groups: Any = None) -> Self:
        """Build the text prototypes (no image needed); given normal images, their scores become the calibration."""
        if groups is not None:
            raise ParameterError("clip calibrates its normal images as one pool; groups are not supported")
        model = self.extractor
        self._check_params(model)
        if self.vocab is None:
            raise WeightsNotFoundError("the clip detector encodes its prompts with CLIP's tokenizer: pass vocab=<local "
                                       "bpe_simple_vocab_16e6.txt.gz> (the merges file that belongs to the weights)")
        tokenizer = ClipTokenizer.from_file(self.vocab, vocab_size=model.config.vocab_size)
        normal, abnormal = self.prompt_texts()
        protos = [F.normalize(model.encode_text(texts, tokenizer).mean(0), dim=0) for texts in (normal, abnormal)]
        self.text_prototypes_ = torch.stack(protos).numpy()
        self.prompt_counts_ = (len(normal), len(abnormal))
        self.vocab_sha256_ = file_sha256(Path(self.vocab).expanduser())
        return self._calibrate_untrained(X, "zero-shot")

    def _fit(self, items: list) -> None:  # never called: fit is overridden
        raise NotImplementedError

    # ---- scoring ----------------------------------------------------------------------------------------------
    def _score(self, items: list) -> ScoreResult:
        from normalcy.data import as_rgb_array

        self.check_fitted()
        model = self.extractor
        self._check_params(model)
        protos = torch.tensor(np.asarray(self.text_prototypes_), dtype=torch.float32)
        if protos.shape != (2, model.config.embed_dim):
            raise WeightsMismatchError(f"the text prototypes ({tuple(protos.shape)}) do not fit the weights "
                                       f"{self.weights} (embedding {model.config.embed_dim}); refit with these weights")
        scale = float(model.logit_scale.exp().clamp(max=100.0))
        size = int(self.image_size)
        w = float(self.global_weight)
        scores, maps = [], []
        bar = progress_bar(total=len(items), desc="clip", unit="img", disable=not self.progress, leave=False)
        try:
            for start in range(0, len(items), int(self.batch_size)):
                arrays = [as_rgb_array(a) for a in items[start : start + int(self.batch_size)]]
                x, placements = prepare_batch(arrays, size, self.resize_mode)
                image_emb, patch_emb = model.encode_image(x, int(self.dense_layers))
                patch_p = torch.einsum("bchw,kc->bkhw", patch_emb, protos).mul(scale).softmax(dim=1)[:, 1]
                image_p = (image_emb @ protos.T).mul(scale).softmax(dim=1)[:, 1]
                valid = valid_grid(placements, size, tuple(patch_p.shape[-2:]))
                scores.append(((1.0 - w) * masked_max(patch_p, valid) + w * image_p).double().numpy())
                maps.extend(restore_maps(patch_p, placements, size, float(self.sigma)))
                bar.update(len(arrays))
        finally:
            bar.close()
        return ScoreResult(np.concatenate(scores) if scores else np.empty(0), maps)

    # ---- persistence (normalcy.store): prototypes and hashes, never the weights --------------------------------
    def save(self, path: Any) -> Any:
        """Write the fitted detector; callable prompt sources are saved as the prompts they produced."""
        from normalcy.store import save

        if callable(self.normal_prompts) or callable(self.abnormal_prompts):
            normal, abnormal = self.prompt_texts()
            saved = type(self)(**{**self.get_params(), "normal_prompts": normal, "abnormal_prompts": abnormal})
            saved.__dict__.update({k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")})
            return save(saved, path)
        return save(self, path)

    def _state_arrays(self) -> dict[str, np.ndarray]:
        return {"text_prototypes": np.asarray(self.text_prototypes_, dtype=np.float32)}

    def _state_meta(self) -> dict[str, Any]:
        return {"prompt_counts": list(self.prompt_counts_), "vocab_sha256": self.vocab_sha256_,
                "weights_note": "CLIP weights are referenced by path + sha256 (params.weights, backbone), not stored"}

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        protos = arrays["text_prototypes"]
        if protos.ndim != 2 or protos.shape[0] != 2:
            raise ValueError(f"text_prototypes has shape {protos.shape}, expected (2, embedding)")
        self.text_prototypes_ = protos
        self.prompt_counts_ = tuple(int(v) for v in meta.get("prompt_counts", (0, 0)))
        self.vocab_sha256_ = str(meta.get("vocab_sha256", ""))
