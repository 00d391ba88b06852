"""Pydantic response models: they shape the JSON and document every field in the OpenAPI page at /docs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """A refused request: `detail` names the limit or problem and the offending value."""

    detail: str = Field(description="What was refused and why, naming the limit and the value that broke it")


class Region(BaseModel):
    """One connected defect region of the mask."""

    box: list[int] = Field(description="Bounding box [x0, y0, x1, y1] in original-image pixels (end exclusive)")
    area: int = Field(description="Number of mask pixels in the region")
    peak: float | None = Field(None, description="Highest anomaly-map value inside the region")
    area_fraction: float | None = Field(None, description="Region area / image area")
    centroid: list[float] | None = Field(None, description="Centre of mass [x, y] in original-image pixels")
    mean: float | None = Field(None, description="Mean anomaly-map value inside the region")
    p_value: float | None = Field(None, description="Fraction of normal calibration pixels scoring >= the peak")
    severity: str | None = Field(None, description="severe (peak beyond the normal pixel range) or anomalous")
    defect_type: str | None = Field(None, description="Nearest known defect type (when a gallery is configured)")
    similarity: float | None = Field(None, description="Cosine similarity to that type's nearest example")


class ImageResult(BaseModel):
    """The decision for one uploaded image, or the reason it could not be scored."""

    index: int = Field(description="Position of the file in the request (0-based)")
    filename: str = Field(description="The client's file name, echoed only (never used as a path)")
    status: Literal["ok", "error"] = Field(description='"ok", or "error" for an image that could not be decoded')
    error: str = Field("", description="Why the image could not be scored (empty when status is ok)")
    format: str | None = Field(None, description="Image format detected from the content: PNG, JPEG, BMP, TIFF, WEBP")
    width: int | None = Field(None, description="Width in pixels after applying EXIF orientation")
    height: int | None = Field(None, description="Height in pixels after applying EXIF orientation")
    score: float | None = Field(None, description="Raw anomaly score, higher = more anomalous (re-decide with "
                                                  "GET /model calibration.scores)")
    p_value: float | None = Field(None, description="Conformal p-value (1 + #{calibration scores >= score}) / "
                                                    "(n + 1): the false-alarm rate at which this image is flagged")
    is_anomaly: bool | None = Field(None, description="Flagged: p_value <= alpha")
    severity: str | None = Field(None, description="normal (p > 5·alpha), suspicious (alpha < p <= 5·alpha), "
                                                   "anomalous (p <= alpha), severe (score beyond the normal range)")
    defect_area: int | None = Field(None, description="Mask pixels (0 when the image is not flagged)")
    regions: list[Region] = Field(default_factory=list, description="Connected defect regions of the mask, "
                                                                     "highest peak first (empty when not flagged)")
    explanation: str | None = Field(None, description="One-sentence summary of the decision and its regions")
    overlay: str | None = Field(None, description="PNG data URL: heat map blended over the image with the mask "
                                                  "outlined in cyan (longest side <= preview_max_side)")
    heatmap: str | None = Field(None, description="PNG data URL: RGBA heat map whose alpha rises with the score, to "
                                                  "layer over the original at any opacity (preview size)")
    inspection_uid: str | None = Field(None, description="Id of this decision in the history database (with --db)")
    mask: str | None = Field(None, description="PNG data URL: 1-bit defect mask at the image's full size "
                                               "(pixel map value above the pixel_fpr threshold, only when flagged)")


class PredictResponse(BaseModel):
    """Decisions for every uploaded image, in upload order."""

    request_id: str = Field(description="The client's X-Request-ID header if given, else a new id (in the history)")
    detector: str = Field(description="Registered name of the detector that scored the images")
    alpha: float = Field(description="Target false-alarm rate used for is_anomaly and severity")
    pixel_fpr: float = Field(description="Pixel false-positive rate used for the defect mask")
    score_threshold: float | None = Field(description="Flag when score > this at alpha (null: alpha is below "
                                                      "1/(n+1), too few calibration scores to ever flag)")
    n_ok: int = Field(description="Images scored")
    n_error: int = Field(description="Images that could not be decoded (see their error)")
    elapsed_ms: float = Field(description="Server time for this request, queueing included")
    results: list[ImageResult] = Field(description="One entry per uploaded file, in upload order")


class Calibration(BaseModel):
    """Held-out normal scores: everything needed to recompute p-values and decisions client-side."""

    method: str = Field(description="holdout, cross-fit or none")
    n: int = Field(description="Number of calibration scores")
    scores: list[float] = Field(description="Sorted calibration scores; p = (1 + #{scores >= s}) / (n + 1)")
    severe_threshold: float | None = Field(description="Scores at or above this are severe when flagged")
    suspicious_factor: float = Field(description="alpha < p <= factor·alpha is graded suspicious")
    min_reachable_alpha: float | None = Field(description="1/(n+1): smaller alphas can never flag an image")


class Backbone(BaseModel):
    """The feature backbone the model was fitted with."""

    name: str | None = Field(description="Backbone name")
    weights_sha256: str | None = Field(description="SHA-256 of the backbone weights")


class Limits(BaseModel):
    """Request limits in force (defaults in docs/serve.md)."""

    max_files: int = Field(description="Images per request")
    max_file_bytes: int = Field(description="Bytes per uploaded file")
    max_request_bytes: int = Field(description="Bytes per request body")
    max_pixels: int = Field(description="Width × height per image, checked before decoding")
    queue_size: int = Field(description="Requests that may wait for a worker before the server answers 503")
    workers: int = Field(description="Inference threads")
    chunk_size: int = Field(description="Images decoded and scored together inside a request")
    preview_max_side: int = Field(description="Longest side of overlay and heatmap PNGs")


class ModelInfo(BaseModel):
    """What model is being served and how its decisions are calibrated."""

    detector: str = Field(description="Registered detector name, e.g. patchcore")
    params: dict[str, Any] = Field(description="Detector parameters as saved in the model file")
    backbone: Backbone = Field(description="Feature backbone")
    image_size: int = Field(description="Square network input size")
    model_file: str = Field(description="Model file name (no directory)")
    normalcy_version: str = Field(description="normalcy version that wrote the model")
    server_version: str = Field(description="normalcy version serving it")
    created: str | None = Field(description="When the model was saved (UTC, ISO 8601)")
    n_fit: int = Field(description="Normal images the model was fitted on")
    default_alpha: float = Field(description="alpha used when a request gives none")
    default_pixel_fpr: float = Field(description="pixel_fpr used when a request gives none")
    calibration: Calibration = Field(description="Calibration scores and grading rules")
    display_range: list[float] = Field(description="[vmin, vmax] of the heat-map colour scale")
    limits: Limits = Field(description="Request limits")


class Health(BaseModel):
    """Liveness and load."""

    status: Literal["ok"] = Field(description="Always ok when the server answers")
    model_loaded: bool = Field(description="The model is loaded and warmed up")
    queue: dict[str, int] = Field(description="pending (running + waiting), capacity, workers, queue_size, "
                                              "completed and rejected (503) request counts")
    uptime_s: float = Field(description="Seconds since start-up")
    history: dict[str, Any] | None = Field(None, description="History database: enabled, state (ok, down, unknown), "
                                                            "last_error, down_since, queued, spooled, written, "
                                                            "replayed (see docs/serve.md)")
    drift: dict[str, Any] | None = Field(None, description="Drift monitor: images watched, alarm (null while quiet)")
