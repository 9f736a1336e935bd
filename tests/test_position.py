"""Position bias (ensemble.core.position): the single pass of a model on the battles and on their A/B swaps,
per fold on the held-out rows, into the OOF file's metadata, metrics.json and the report."""

from dataclasses import dataclass

import numpy as np
import pandas as pd
from conftest import battle_frame

from ensemble.blend.run import run as run_blend
from ensemble.core import position
from ensemble.core.data import save_battles
from ensemble.core.folds import make_folds
from ensemble.pipeline.oof import run_oof


@dataclass
class _Config:
    swap_tta: bool = True


class _FirstSeat:
    """Prefers whichever answer is shown first unless B is much longer; with swap TTA it averages both orders."""

    def __init__(self):
        self.config = _Config()
        self.calls = []

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        self.calls.append(self.config.swap_tta)
        la = np.array([len(" ".join(c)) for c in frame["response_a"]])
        lb = np.array([len(" ".join(c)) for c in frame["response_b"]])
        p = np.where((lb > la + 40)[:, None], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1])
        return 0.5 * (p + p[:, [1, 0, 2]]) if self.config.swap_tta else p


def test_an_order_biased_model_flips_and_single_pass_switches_tta_off_and_back():
    """Breaks if the swapped pass is not put back in the original order (flips would read 0 or 1 wrongly), if
    the passes keep TTA on (symmetric: 0 flips), or if the config is not restored."""
    model, frame = _FirstSeat(), battle_frame(60)
    first, swapped = position.passes(model, frame)
    assert model.calls == [False, False] and model.config.swap_tta is True
    la = np.array([len(" ".join(c)) for c in frame["response_a"]])
    lb = np.array([len(" ".join(c)) for c in frame["response_b"]])
    clear = (lb > la + 40) | (la > lb + 40)  # a length gap decides whichever the order
    c = position.counts(first, swapped)
    assert c["rows"] == 60 and c["flips"] == int((~clear).sum()) > 0
    np.testing.assert_allclose(c["gap_sum"], 0.3 * (~clear).sum() + 0.1 * clear.sum())  # 0.6 vs 0.7 when clear
    s = position.summarise([c, c])
    assert s == {"rows": 120, "flip_share": round(c["flips"] / 60, 6), "mean_gap": round(c["gap_sum"] / 60, 6)}
    # the same model with TTA as it submits: symmetric, nothing flips
    with_tta = position.counts(model.predict_proba(frame), position.unswap_proba(
        model.predict_proba(position.swap_ab(frame))))
    assert with_tta["flips"] == 0 and with_tta["gap_sum"] < 1e-9


def test_oof_run_records_position_bias_and_the_blend_reports_it(tmp_path, capsys):
    """Per-fold counts on the valid rows, summed into the OOF file's metadata, then metrics.json; a rerun
    reuses the fold files. Breaks if a fold is skipped (rows != training rows) or metrics lose it."""
    art = tmp_path / "artifacts"
    train = battle_frame(90, seed=1)
    save_battles(art / "prepared" / "train.parquet", train)
    folds = make_folds(train, 3, seed=0)
    folds.to_parquet(art / "folds.parquet")
    cfg = {"n_estimators": 10, "early_stopping_rounds": 0, "n_jobs": 1, "swap_augment": False,
           "vectorizer": {"max_features": 30, "min_df": 1}}
    run_oof("lgbm", cfg, train, folds, art)
    bias = position.read(art / "oof" / "lgbm.parquet")
    assert bias["rows"] == 90 and 0 <= bias["flip_share"] <= 1 and bias["mean_gap"] >= 0
    assert all((art / "models" / "lgbm" / f"fold_{k}" / "position_bias.json").is_file() for k in range(3))
    run_oof("lgbm", cfg, train, folds, art)  # reused folds: the same figures from the fold files
    assert position.read(art / "oof" / "lgbm.parquet") == bias
    metrics = run_blend({"blend": {"models": ["lgbm"], "bootstrap": 0}}, art, metrics_path=tmp_path / "head.json")
    assert metrics["models"]["lgbm"]["position_bias"] == bias
    assert position.read(tmp_path / "missing.parquet") is None


def test_report_shows_position_bias_per_model():
    from types import SimpleNamespace

    from ensemble.report.html import _position_html

    metrics = {"models": {"lgbm": {"position_bias": {"rows": 90, "flip_share": 0.1, "mean_gap": 0.02}},
                          "gemma": {}}}
    html = _position_html(SimpleNamespace(metrics=metrics))
    assert "Position bias" in html and ">lgbm<" in html and "10.0%" in html and "gemma" not in html
    assert _position_html(SimpleNamespace(metrics={"models": {"gemma": {}}})) == ""
