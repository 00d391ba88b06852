"""`normalcy bench … --report report.html`: one self-contained HTML page per run (inline SVG charts and inline PNG
overlays, no scripts, no CDN) with ROC and PR curves, a per-defect-type table, score histograms with the decision
threshold, the calibration plot (realized vs target false-alarm rate) and the worst false positives/negatives."""

from __future__ import annotations

import base64
import io
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

from normalcy import __version__
from normalcy.apps.bench.svg import PALETTE, Chart
from normalcy.errors import NormalcyError

TARGET_ALPHAS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)  # calibration plot: target false-alarm rates
N_WORST = 4  # images shown per worst-case gallery
THUMB = 256  # longest side of an overlay thumbnail, px


def _png_b64(image: Any) -> str:
    """A PIL image as an inline `data:` URL (thumbnail, PNG)."""
    image = image.copy()
    image.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _picture(det: Any, sample: Any, amap: np.ndarray | None, mask: np.ndarray | None) -> str:
    """The image with its anomaly-map overlay and mask outline (the plain image for detectors without maps)."""
    from PIL import Image

    from normalcy.data import as_rgb_array
    from normalcy.explain.overlay import display_range, overlay

    img = as_rgb_array(sample.path)
    if amap is None:
        return _png_b64(Image.fromarray(img))
    vmin, vmax = display_range(det.calibration_)
    return _png_b64(overlay(img, amap, vmin, vmax, mask=mask))


def collect(det: Any, category: str, detector: str, test: list, result: Any) -> dict[str, Any]:
    """Everything the report shows for one fitted detector on one category's test set (scores, decisions, types,
    calibration and the worst cases' overlays), taken while the detector is still in memory."""
    cal = det.calibration_
    scores = np.asarray(result.scores, dtype=np.float64)
    labels = np.array([s.label for s in test])
    alpha = float(det.alpha)
    preds = det.decide(result, alpha=alpha)  # the detector's own decisions, whatever its calibration method
    flagged = np.array([p.is_anomaly for p in preds])
    p_values = np.array([p.p_value for p in preds], dtype=np.float64)
    good = labels == 0
    realized = [float(np.mean([p.is_anomaly for p, g in zip(det.decide(result, alpha=a), good) if g]))
                if good.any() else float("nan") for a in TARGET_ALPHAS]
    try:
        threshold = float(cal.threshold(alpha))
    except NormalcyError:  # e.g. cross-conformal decisions have no single score threshold
        threshold = float("nan")

    def cases(idx: np.ndarray) -> list[dict[str, Any]]:
        out = []
        for i in idx[:N_WORST]:
            amap = result.maps[i] if result.maps is not None else None
            out.append({"path": str(test[i].path), "defect_type": test[i].defect_type, "score": float(scores[i]),
                        "p_value": float(p_values[i]), "flagged": bool(flagged[i]),
                        "picture": _picture(det, test[i], amap, preds[i].mask)})
        return out

    normal_idx = np.flatnonzero(good)
    anomalous_idx = np.flatnonzero(labels == 1)
    return {
        "category": category, "detector": detector, "alpha": alpha, "threshold": threshold,
        "scores": scores, "labels": labels, "flagged": flagged, "types": [s.defect_type for s in test],
        "calibration_scores": np.asarray(cal.scores, dtype=np.float64), "calibration_method": cal.method,
        "targets": list(TARGET_ALPHAS), "realized": realized,
        "worst_fp": cases(normal_idx[np.argsort(-scores[normal_idx], kind="stable")]),
        "worst_fn": cases(anomalous_idx[np.argsort(scores[anomalous_idx], kind="stable")]),
    }


# ---- charts -----------------------------------------------------------------------------------------------
def roc_svg(d: dict[str, Any]) -> str:
    labels, scores = d["labels"], d["scores"]
    chart = Chart("ROC (image level)", "false-positive rate", "true-positive rate", (0, 1), (0, 1),
                  legend_at="bottom-right")
    chart.line([0, 1], [0, 1], PALETTE["ideal"], "chance", dash=True)
    if len(set(labels.tolist())) == 2:
        fpr, tpr, _ = roc_curve(labels, scores)
        chart.line(fpr, tpr, PALETTE["anomalous"], f"AUROC {roc_auc_score(labels, scores):.3f}")
        rate_fp = d["flagged"][labels == 0].mean()
        rate_tp = d["flagged"][labels == 1].mean()
        chart.line([rate_fp], [rate_tp], PALETTE["threshold"], f"decision at alpha={d['alpha']:g}", points=True)
    return chart.svg()


def pr_svg(d: dict[str, Any]) -> str:
    labels, scores = d["labels"], d["scores"]
    base = float(labels.mean()) if labels.size else 0.0
    chart = Chart("Precision-recall (image level)", "recall", "precision", (0, 1), (0, 1), legend_at="bottom-right")
    chart.line([0, 1], [base, base], PALETTE["ideal"], f"chance ({base:.2f})", dash=True)
    if len(set(labels.tolist())) == 2:
        precision, recall, _ = precision_recall_curve(labels, scores)
        chart.line(recall, precision, PALETTE["anomalous"], "detector")
    return chart.svg()


def histogram_svg(d: dict[str, Any]) -> str:
    labels, scores, t = d["labels"], d["scores"], d["threshold"]
    lo, hi = float(scores.min()), float(scores.max())
    if np.isfinite(t):
        lo, hi = min(lo, t), max(hi, t)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, 31)
    normal = np.histogram(scores[labels == 0], edges)[0] / max(1, int((labels == 0).sum()))
    anomalous = np.histogram(scores[labels == 1], edges)[0] / max(1, int((labels == 1).sum()))
    chart = Chart("Scores: normal vs anomalous", "image score", "share of images", (edges[0], edges[-1]),
                  (0, float(max(normal.max(initial=0), anomalous.max(initial=0))) * 1.1 or 1.0), legend_at="top-right")
    chart.bars(edges, normal, PALETTE["normal"], "normal")
    chart.bars(edges, anomalous, PALETTE["anomalous"], "anomalous")
    if np.isfinite(t) or np.isinf(t):
        chart.vline(t, PALETTE["threshold"], f"threshold (alpha={d['alpha']:g})")
    return chart.svg()


def calibration_svg(d: dict[str, Any]) -> str:
    targets = np.array(d["targets"])
    realized = np.array(d["realized"], dtype=float)
    top = float(max(targets.max(), np.nanmax(realized) if np.isfinite(realized).any() else 0.0)) * 1.05
    chart = Chart("Calibration: realized vs target false-alarm rate", "target alpha",
                  "realized FPR on normal test images", (0, top), (0, top))
    chart.line([0, top], [0, top], PALETTE["ideal"], "ideal (realized = target)", dash=True)
    ok = np.isfinite(realized)
    chart.line(targets[ok], realized[ok], PALETTE["normal"], f"{d['calibration_method']} calibration", points=True)
    return chart.svg()


# ---- tables and page ---------------------------------------------------------------------------------------
def type_table(d: dict[str, Any]) -> str:
    """Per defect type: images, detected at the decision alpha, AUROC of that type against the normal images."""
    labels, scores, flagged = d["labels"], d["scores"], d["flagged"]
    types = np.array(d["types"])
    good = labels == 0
    rows = [f"<tr><td>good (normal)</td><td>{int(good.sum())}</td><td>{flagged[good].mean():.1%} flagged "
            f"(false alarms)</td><td></td><td>{np.median(scores[good]):.4g}</td></tr>"] if good.any() else []
    for name in sorted(set(types[labels == 1].tolist())):
        sel = (types == name) & (labels == 1)
        auroc = (roc_auc_score(np.r_[np.zeros(good.sum()), np.ones(sel.sum())], np.r_[scores[good], scores[sel]])
                 if good.any() else float("nan"))
        rows.append(f"<tr><td>{escape(name)}</td><td>{int(sel.sum())}</td><td>{flagged[sel].mean():.1%} detected"
                    f"</td><td>{auroc:.3f}</td><td>{np.median(scores[sel]):.4g}</td></tr>")
    return ("<table><tr><th>defect type</th><th>images</th><th>at alpha</th><th>AUROC vs good</th>"
            "<th>median score</th></tr>" + "".join(rows) + "</table>")


def gallery(title: str, cases: list[dict[str, Any]], note: str) -> str:
    if not cases:
        return f"<h4>{escape(title)}</h4><p class=note>none in this test set</p>"
    figs = []
    for c in cases:
        verdict = "flagged" if c["flagged"] else "passed"
        figs.append(f'<figure><img src="{c["picture"]}" alt="{escape(Path(c["path"]).name)}">'
                    f"<figcaption>{escape(Path(c['path']).name)} ({escape(c['defect_type'])})<br>score "
                    f"{c['score']:.4g}, p={c['p_value']:.3g}, {verdict}</figcaption></figure>")
    return f"<h4>{escape(title)}</h4><p class=note>{escape(note)}</p><div class=gallery>{''.join(figs)}</div>"


CSS = """body{font-family:sans-serif;margin:24px;color:#222;max-width:1200px}h2{border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.charts{display:flex;flex-wrap:wrap;gap:12px}
.gallery{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;width:260px}figure img{max-width:256px;display:block}
figcaption{font-size:12px}.note{color:#555;font-size:13px}"""


def threshold_note(threshold: float) -> str:
    """" (score > t)" when the decision is one score threshold, else nothing."""
    return f" (score &gt; {threshold:.4g})" if np.isfinite(threshold) else ""


def render(rows: list[dict[str, Any]], details: list[dict[str, Any]], source: str) -> str:
    """The whole report page as one HTML string (no external resources, no scripts)."""
    from normalcy.apps.bench.images import format_table

    sections = []
    for d in details:
        sections.append(
            f"<section><h2>{escape(d['category'])}: {escape(d['detector'])}</h2>"
            f"<p class=note>{len(d['scores'])} test images ({int((d['labels'] == 1).sum())} anomalous); decisions "
            f"at alpha={d['alpha']:g}{threshold_note(d['threshold'])}; {d['calibration_method']} calibration "
            f"on {len(d['calibration_scores'])} normal scores.</p>"
            f"<div class=charts>{roc_svg(d)}{pr_svg(d)}{histogram_svg(d)}{calibration_svg(d)}</div>"
            f"<h3>Per defect type</h3>{type_table(d)}<h3>Worst cases</h3>"
            + gallery("Worst false positives", d["worst_fp"], "normal test images with the highest scores")
            + gallery("Worst false negatives", d["worst_fn"], "anomalous test images with the lowest scores")
            + "</section>"
        )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>normalcy bench report</title>"
            f"<style>{CSS}</style></head><body><h1>normalcy bench report</h1>"
            f"<p class=note>{escape(source)}; normalcy {__version__}; {stamp}. Overlays: anomaly map in colour on "
            f"the calibrated scale, predicted defect mask outlined.</p>"
            f"<h2>Summary</h2><pre>{escape(format_table(rows))}</pre>{''.join(sections)}</body></html>")


def write_report(path: str | Path, rows: list[dict[str, Any]], details: list[dict[str, Any]], source: str) -> Path:
    """Write the report atomically (a half-written page never replaces a good one)."""
    from normalcy.data.files import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(render(rows, details, source), encoding="utf-8")
    return path
