"""Defect-type discovery: clustering metrics by hand and vs scikit-learn, K selection, contact sheets, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from normalcy.errors import ParameterError
from normalcy.explain.clustering import (
    ari,
    cluster,
    cluster_accuracy,
    cluster_metrics,
    contingency,
    nmi,
    prepare_embeddings,
)
from normalcy.explain.contact_sheet import MIN_CROP, crop_box

TRUTH = [0, 0, 0, 1, 1, 1]
PRED = [0, 0, 1, 1, 2, 2]


def test_metrics_match_hand_computed_values():
    # contingency [[2, 1, 0], [0, 1, 2]]: MI = 2/3 ln 2, H(truth) = ln 2, H(pred) = ln 3
    assert contingency(TRUTH, PRED).tolist() == [[2, 1, 0], [0, 1, 2]]
    assert nmi(TRUTH, PRED) == pytest.approx((2 / 3 * math.log(2)) / ((math.log(2) + math.log(3)) / 2))
    # pairs together in both: 1 + 1 = 2; class pairs 3 + 3 = 6; cluster pairs 1 + 1 + 1 = 3; all pairs 15
    expected = 6 * 3 / 15
    assert ari(TRUTH, PRED) == pytest.approx((2 - expected) / ((6 + 3) / 2 - expected))
    assert cluster_accuracy(TRUTH, PRED) == pytest.approx(4 / 6)  # class 0 -> cluster 0, class 1 -> cluster 2


def test_metrics_are_one_for_a_relabelled_partition_and_low_for_one_cluster():
    truth = ["crack", "crack", "hole", "hole", "fray"]
    assert cluster_metrics(truth, [7, 7, 3, 3, 1]) == {"nmi": 1.0, "ari": 1.0, "accuracy": 1.0}
    assert nmi(truth, [0] * 5) == 0.0 and ari(truth, [0] * 5) == 0.0
    assert cluster_accuracy(truth, [0] * 5) == pytest.approx(2 / 5)
    with pytest.raises(ParameterError):
        nmi([0, 1], [0])


def test_metrics_agree_with_scikit_learn_on_random_labelings():
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 200))
        t, p = rng.integers(0, rng.integers(1, 6), n), rng.integers(0, rng.integers(1, 8), n)
        assert nmi(t, p) == pytest.approx(normalized_mutual_info_score(t, p), abs=1e-10)
        assert ari(t, p) == pytest.approx(adjusted_rand_score(t, p), abs=1e-10)


def test_cluster_picks_k_from_the_data():
    rng = np.random.default_rng(1)
    centres = np.eye(8)[:3] * 10
    x = np.concatenate([c + rng.normal(0, 0.5, (20, 8)) for c in centres])
    result = cluster(prepare_embeddings(x))
    assert result.k == 3 and max(result.silhouettes, key=result.silhouettes.get) == 3
    assert cluster_metrics(np.repeat([0, 1, 2], 20), result.labels)["accuracy"] == 1.0
    assert cluster(x, k=2).k == 2 and cluster(x[:1]).k == 1


def test_crop_box_keeps_context_and_stays_inside():
    assert crop_box([10, 10, 12, 12], (100, 200)) == (0, 0, MIN_CROP, MIN_CROP)
    left, top, right, bottom = crop_box([150, 40, 190, 60], (100, 200))
    assert right == 200 and right - left == bottom - top == 80 and 0 <= top and bottom <= 100


@pytest.fixture(scope="module")
def tiny_mvtec(tmp_path_factory):
    from normalcy.data import make_demo_dataset

    root = make_demo_dataset(tmp_path_factory.mktemp("demo"), categories=("tiles",), n_train=24, n_test_good=3,
                             n_test_defect_per_type=4, size=96, seed=0)
    return root / "tiles"


@pytest.mark.filterwarnings("ignore:.*smallest p-value")  # fitted at the default alpha, decided at 0.1
def test_discover_cli_writes_sheets_and_report(tiny_mvtec, tmp_path):
    from normalcy.apps.cli import EXIT_OK, main

    out, report_path = tmp_path / "sheets", tmp_path / "report.json"
    code = main(["discover", str(tiny_mvtec), "--json", str(report_path), "-o", str(out), "--fit-images", "0",
                 "--image-size", "96", "--alpha", "0.1"])
    assert code == EXIT_OK
    report = json.loads(report_path.read_text())
    assert {"k", "nmi", "ari", "accuracy"} <= set(report)
    assert report["n_regions"] >= 2 and 1 <= report["k"] <= report["n_regions"]
    assert report["reference"] == "nearest" and report["k_selection"].startswith("silhouette")
    sheets = sorted(out.glob("cluster_*.png"))
    assert len(sheets) == report["k"] == len(report["clusters"])
    assert sum(c["size"] for c in report["clusters"]) == len(report["assignments"]) == report["n_regions"]
    assert Image.open(sheets[0]).size[0] > 0
    assert 0.0 <= report["nmi"] <= 1.0 and 0.0 <= report["accuracy"] <= 1.0
    assert report["oracle_gt_masks"]["n_scored"] == 12  # 3 defect types × 4, all with masks
    nn = report["gallery_1nn"]
    assert nn["n_gt"] == 12 and 0.0 <= nn["gt_regions"] <= 1.0


def test_discover_without_model_needs_train_good(tmp_path):
    from normalcy.errors import LayoutError
    from normalcy.explain.discover import discover

    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    with pytest.raises(LayoutError):
        discover(tmp_path / "imgs", tmp_path / "out")
