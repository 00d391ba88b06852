"""Optional narrator: ask an OpenAI-compatible chat endpoint (e.g. a local model server) to describe a detection.

It sends the image and the heat-map overlay as base64 PNG data URLs plus the structured explanation, and returns
the reply. It never raises: a timeout, an HTTP error or a malformed answer is recorded in the result's `error`,
and the structured explanation it was given is left as it was.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from normalcy.errors import ParameterError

SYSTEM_PROMPT = ("You are an inspection assistant. You get a product image, the same image with an anomaly heat map "
                 "over it (bright = unusual, cyan outline = flagged region) and a JSON explanation computed by a "
                 "calibrated anomaly detector. In two or three sentences, describe what the flagged regions look like "
                 "and what kind of defect they may be. Do not contradict the numbers in the JSON.")
KEY_ENV = "NORMALCY_NARRATOR_KEY"  # optional bearer token for endpoints that need one
MAX_SIDE = 512  # images are downscaled to at most this side before sending


def png_data_url(image: np.ndarray | Image.Image, max_side: int = MAX_SIDE) -> str:
    """A PNG data URL of the image, downscaled so the longest side is at most `max_side`."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    scale = min(1.0, max_side / max(img.size))
    if scale < 1.0:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class Narrator:
    """Client for `POST {url}/chat/completions` of an OpenAI-compatible server."""

    url: str
    model: str
    timeout: float = 30.0
    max_tokens: int = 200

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ParameterError(f"--narrator-url must start with http:// or https://, got {self.url!r}")
        if not self.model:
            raise ParameterError("--narrator-model is required with --narrator-url")
        if not self.timeout > 0:
            raise ParameterError(f"narrator timeout must be > 0 seconds, got {self.timeout}")

    def messages(self, image: Any, overlay: Any, explanation: dict[str, Any]) -> list[dict[str, Any]]:
        """The chat messages: system prompt, then the explanation JSON and both pictures as data URLs."""
        text = "Detector explanation (JSON):\n" + json.dumps(explanation, default=float)
        content = [{"type": "text", "text": text},
                   {"type": "image_url", "image_url": {"url": png_data_url(image)}},
                   {"type": "image_url", "image_url": {"url": png_data_url(overlay)}}]
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]

    def narrate(self, image: Any, overlay: Any, explanation: dict[str, Any]) -> dict[str, Any]:
        """{"model", "reply", "error", "elapsed_s"}: the reply text, or the reason there is none.

        Uses only the standard library (urllib), so it works on a default install without httpx.
        """
        out: dict[str, Any] = {"model": self.model, "reply": None, "error": ""}
        start = time.perf_counter()
        try:
            body = {"model": self.model, "messages": self.messages(image, overlay, explanation),
                    "max_tokens": self.max_tokens, "temperature": 0}
            out["reply"] = self._post(body)
        except HttpStatusError as exc:
            out["error"] = str(exc)
        except TimeoutError:
            out["error"] = f"timeout after {self.timeout:g} s"
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None)
            if isinstance(reason, TimeoutError):
                out["error"] = f"timeout after {self.timeout:g} s"
            else:
                out["error"] = f"{type(exc).__name__}: {reason or exc}"
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            out["error"] = f"malformed reply: {type(exc).__name__}: {exc}"
        out["elapsed_s"] = round(time.perf_counter() - start, 3)
        return out

    def _post(self, body: dict[str, Any]) -> str:
        """POST the chat request and return the reply text (raises on HTTP errors and malformed replies)."""
        headers = {"Content-Type": "application/json"}
        if os.environ.get(KEY_ENV):
            headers["Authorization"] = f"Bearer {os.environ[KEY_ENV]}"
        req = urllib.request.Request(self.url.rstrip("/") + "/chat/completions", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 (http(s) checked above)
                data = resp.read()
        except urllib.error.HTTPError as exc:
            text = exc.read()[:200].decode("utf-8", "replace")
            raise HttpStatusError(f"HTTP {exc.code}: {text}") from None
        return str(json.loads(data)["choices"][0]["message"]["content"]).strip()


class HttpStatusError(Exception):
    """The narrator endpoint answered with a non-200 status."""
