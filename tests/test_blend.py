"""Blenders behind one interface (ensemble.blend): each learns what it should on synthetic OOF matrices,
round-trips through JSON, handles binary labels; cross-fitting and the nested choice never score a
row that chose anything; the blend stage writes the cross-fitted blend and its intervals."""

import json
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

from ensemble.blend import BLENDERS, blender_class, blender_from_json, create_blender
from ensemble.blend.__main__ import main
from ensemble.blend.baselines import PriorBlender
from ensemble.blend.bootstrap import paired_diff_ci
from ensemble.blend.config import BlendConfig
from ensemble.blend.crossfit import crossfit
from ensemble.blend.run import run
from ensemble.blend.stack import StackConfig
from ensemble.blend.weights import apply_blend, fit_weights
from ensemble.core.cli import fail_cleanly
from ensemble.core.config import ConfigError, from_dict
from ensemble.core.data import DataError, save_battles
from ensemble.core.metrics import log_loss, row_log_loss
from ensemble.core.predictions import proba_frame

CFG = from_dict(BlendConfig, {}, "blend")


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def frame_of(n: int, per_prompt: int = 3, lengths=None) -> pd.DataFrame:
    la = lengths if lengths is not None else np.full(n, 10)
    return pd.DataFrame({"id": np.arange(n).astype(str), "prompt": [[f"q{i // per_prompt}"] for i in range(n)],
                         "response_a": [["x" * int(k)] for k in la], "response_b": [["y" * 10]] * n})


def synthetic_oof(n=4000, seed=0):
    """Labels drawn from a known mixture of three models' probabilities."""
    rng = np.random.default_rng(seed)
    models = [rng.dirichlet(np.ones(3) * a, size=n) for a in (0.5, 1.0, 2.0)]
    true_w = np.array([0.6, 0.3, 0.1])
    mix = np.tensordot(true_w, np.stack(models), axes=1)
    labels = np.array([rng.choice(3, p=p) for p in mix])
    return models, labels, true_w


def good_and_useless(n=3000, seed=4):
    rng = np.random.default_rng(seed)
    good = softmax(1.5 * rng.normal(size=(n, 3)))  # calibrated: the labels are drawn from it
    labels = np.array([rng.choice(3, p=p) for p in good])
    return [good[rng.permutation(n)], good], labels  # useless: same spread of probabilities, no information


def fitted(name, probas, labels, frame=None, models=None):
    models = models or [f"m{i}" for i in range(len(probas))]
    return create_blender(name, models, CFG).fit(probas, labels, frame if frame is not None else frame_of(len(labels)))


# ------------------------------------------------------------------------ what each blender learns

def test_weights_recover_a_known_mixture():
    models, labels, true_w = synthetic_oof()
    w = fit_weights(models, labels)
    assert w.min() >= 0 and abs(w.sum() - 1) < 1e-9
    assert np.abs(w - true_w).max() < 0.06


def test_weights_give_a_useless_model_near_zero_and_temperature_softens():
    probas, labels = good_and_useless()
    blend = fitted("weights", probas, labels)
    assert blend.model_weights()["m0"] < 0.03
    over = softmax(3 * np.log(probas[1]))  # overconfident copy of the good model
    single = fitted("weights", [over], labels)
    assert single.temperature > 1.5 and log_loss(labels, single.predict([over])) < log_loss(labels, over)


def test_greedy_selection_counts_picks_and_drops_the_useless_model():
    probas, labels = good_and_useless()
    blend = fitted("greedy", probas, labels)
    w = blend.model_weights()
    assert w == {"m0": 0.0, "m1": 1.0}  # adding the useless model never lowers log loss
    models, labels3, true_w = synthetic_oof()
    mix = fitted("greedy", models, labels3).model_weights()
    assert np.abs(np.array(list(mix.values())) - true_w).max() < 0.1  # multiples of 1/25 near the truth
    assert all(abs(v * 25 - round(v * 25)) < 1e-9 for v in mix.values())


def test_stacker_uses_meta_features_where_weights_cannot():
    rng = np.random.default_rng(0)
    n = 2400
    la, lb = rng.integers(5, 400, n), rng.integers(5, 400, n)
    d = np.log1p(la) - np.log1p(lb)
    labels = np.array([rng.choice(3, p=q) for q in softmax(np.column_stack([2.5 * d, -2.5 * d, np.full(n, 0.3)]))])
    frame = frame_of(n, 4).assign(response_a=[["x" * k] for k in la], response_b=[["y" * k] for k in lb])
    prior = np.tile(np.bincount(labels, minlength=3) / n, (n, 1))
    blind = prior + np.abs(rng.normal(0, 0.02, prior.shape))
    blind /= blind.sum(1, keepdims=True)
    fold_of = (np.arange(n) // 4) % 5
    stack = crossfit(lambda: create_blender("stack", ["blind"], CFG), [blind], labels, fold_of, frame)
    weights = crossfit(lambda: create_blender("weights", ["blind"], CFG), [blind], labels, fold_of, frame)
    assert log_loss(labels, stack) < log_loss(labels, weights) - 0.1  # held-out rows: not true by construction
    plain = crossfit(lambda: blender_class("stack")(["blind"], StackConfig(meta_features=False)), [blind], labels,
                     fold_of, frame)
    assert log_loss(labels, plain) > log_loss(labels, stack) + 0.1


def test_select_is_never_worse_than_the_prior_when_the_models_know_nothing():
    """Three confident models of pure noise on 100 rows (Kaggle's first 100 rows are like that for a CPU
    model): weights, greedy and the best model lose to the prior; select among prior, best, weights and stack,
    cross-fitted with its choice nested, picks the prior and so scores no worse than it. Control: with a
    real signal the same candidates leave the prior."""
    choice = from_dict(BlendConfig, {"select": {"candidates": ["prior", "best", "weights", "stack"]}}, "blend")
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, 100)
    noise = [rng.dirichlet(np.full(3, 0.5), 100) for _ in range(3)]
    fold_of, frame = np.arange(100) % 5, frame_of(100, 1)
    score = {m: log_loss(labels, crossfit(lambda m=m: create_blender(m, ["a", "b", "c"], choice),
                                          noise, labels, fold_of, frame))
             for m in ("prior", "best", "weights", "greedy", "select")}
    assert score["weights"] > score["prior"] + 0.01 and score["greedy"] > score["prior"] + 0.1
    assert score["best"] > score["prior"] + 0.5
    assert score["select"] <= score["prior"] + 0.005
    chosen = create_blender("select", ["a", "b", "c"], choice).fit(noise, labels, frame.assign(fold=fold_of))
    assert chosen.summary()["chosen"] == "prior"
    probas, labels2 = good_and_useless(1500)
    informed = create_blender("select", ["m0", "m1"], choice).fit(probas, labels2, frame_of(1500).assign(
        fold=(np.arange(1500) // 3) % 5))
    inner = informed.summary()["inner_crossfit_log_loss"]
    assert informed.chosen.name != "prior"  # a real signal: the prior is not chosen
    assert inner[informed.chosen.name] < inner["prior"] - 0.2
    wider = from_dict(BlendConfig, {"select": {"candidates": ["prior", "greedy", "weights"]}}, "blend")
    chosen = create_blender("select", ["m0", "m1"], wider).fit(probas, labels2, frame_of(1500).assign(
        fold=(np.arange(1500) // 3) % 5))
    assert chosen.chosen.name == "greedy" and chosen.model_weights() == {"m0": 0.0, "m1": 1.0}


class SpyBlender(PriorBlender):
    """The prior, recording the ids of the rows each instance is fitted on and predicts (a candidate of select)."""

    name = "spy"
    seen: ClassVar[list[dict[str, set[str]]]] = []

    def _fit(self, probas, labels, frame: pd.DataFrame) -> None:
        self.record = {"fit": set(frame["id"]), "predict": set()}
        SpyBlender.seen.append(self.record)
        super()._fit(probas, labels, frame)

    def _predict(self, probas, frame) -> np.ndarray:
        self.record["predict"] |= set(frame["id"])
        return super()._predict(probas, frame)


def test_crossfit_and_the_nested_choice_never_see_the_held_out_fold(monkeypatch):
    """Change every label of fold 0 and the cross-fitted predictions of fold 0 stay the same, for every
    blender, select's inner choice included. And select's choice is nested: inside the cross-fit over three
    folds, each candidate is fitted on one fold and scored on another, never on the outer held-out fold's
    rows nor on the rows it was fitted on. Breaks if crossfit fits on all rows, or if select scores its
    candidates in-sample (an in-sample choice never sees fold 0 either, so the poison alone cannot tell)."""
    probas, labels = good_and_useless(900)
    fold_of = (np.arange(900) // 3) % 3
    frame = frame_of(900)
    poisoned = labels.copy()
    poisoned[fold_of == 0] = (poisoned[fold_of == 0] + 1) % 3
    for name in BLENDERS:
        make = lambda name=name: create_blender(name, ["m0", "m1"], CFG)  # noqa: E731
        clean, bad = (crossfit(make, probas, y, fold_of, frame) for y in (labels, poisoned))
        np.testing.assert_array_equal(clean[fold_of == 0], bad[fold_of == 0], err_msg=name)
        if name in ("weights", "stack", "select"):  # a fitted number moves: the poison does reach other folds
            assert not np.allclose(clean[fold_of == 1], bad[fold_of == 1]), name
    # the spy, a candidate equal to the prior and listed after it, is scored but never chosen
    monkeypatch.setitem(BLENDERS, "spy", f"{__name__}:SpyBlender")
    monkeypatch.setattr(SpyBlender, "seen", [])
    spied = from_dict(BlendConfig, {"select": {"candidates": ["prior", "spy"]}}, "blend")
    crossfit(lambda: create_blender("select", ["m0", "m1"], spied), probas, labels, fold_of, frame)
    fold_by_id = dict(zip(frame["id"], fold_of))
    outer_folds = []
    for record in SpyBlender.seen:
        fitted_on = {fold_by_id[i] for i in record["fit"]}
        scored_on = {fold_by_id[i] for i in record["predict"]}
        assert len(fitted_on) == 1 and len(scored_on) == 1 and fitted_on != scored_on, record
        outer_folds.append(({0, 1, 2} - fitted_on - scored_on).pop())  # the fold this inner fit never saw
    assert sorted(outer_folds) == [0, 0, 1, 1, 2, 2]  # per outer fold: one fit per inner fold


def test_shared_fits_fit_each_training_set_once_and_change_no_number(monkeypatch):
    """select (prior, stack) and stack cross-fitted over 5 folds: 30 stacker fits alone; within shared_fits 15
    (one per pair of left-out folds, one per left-out fold), with predictions equal to the last bit. A
    stacker of another config on the same rows fits anew. Breaks if a fit serves other rows, labels or
    config, or if nothing is shared."""
    from ensemble.blend.stack import StackBlender, shared_fits

    probas, labels = good_and_useless(300)
    fold_of = (np.arange(300) // 3) % 5
    frame = frame_of(300, lengths=np.random.default_rng(0).integers(1, 40, 300))
    two_c = from_dict(BlendConfig, {"stack": {"c_grid": [0.1, 1.0]}}, "blend")
    calls: list[int] = []
    real = StackBlender._fit_numbers
    monkeypatch.setattr(StackBlender, "_fit_numbers", lambda self, *a: calls.append(1) or real(self, *a))

    def cross_fitted(config: BlendConfig) -> list[np.ndarray]:
        return [crossfit(lambda name=name: create_blender(name, ["m0", "m1"], config), probas, labels, fold_of,
                         frame) for name in ("select", "stack")]

    plain = cross_fitted(two_c)
    assert len(calls) == 30
    calls.clear()
    with shared_fits():
        shared = cross_fitted(two_c)
        assert len(calls) == 15
        cross_fitted(from_dict(BlendConfig, {"stack": {"c_grid": [0.5, 2.0]}}, "blend"))
        assert len(calls) == 30
    for a, b in zip(plain, shared, strict=True):
        np.testing.assert_array_equal(a, b)


def test_prompt_groups_from_the_group_column_equal_the_prompts_own_on_any_subset():
    """The blend stage numbers the prompts once (GROUP_COLUMN); a subset of its rows in another order then
    gets the very groups, numbered the same, that its prompts give. Breaks if the column's numbers are
    used as they are (GroupKFold's split depends on them)."""
    from ensemble.core.folds import GROUP_COLUMN, prompt_groups

    frame = frame_of(90, per_prompt=3).sample(frac=1.0, random_state=0).reset_index(drop=True)
    frame[GROUP_COLUMN] = prompt_groups(frame)
    sub = frame.iloc[np.random.default_rng(1).permutation(90)[:50]].reset_index(drop=True)
    np.testing.assert_array_equal(prompt_groups(sub), prompt_groups(sub.drop(columns=GROUP_COLUMN)))


# ------------------------------------------------------------------------ one interface for all

@pytest.mark.parametrize("name", list(BLENDERS))
def test_every_blender_round_trips_and_handles_binary_labels(name):
    rng = np.random.default_rng(3)
    n = 600
    probas = [rng.dirichlet(np.ones(3), n) for _ in range(2)]
    labels = rng.integers(0, 3, n)
    frame = frame_of(n).assign(fold=(np.arange(n) // 3) % 4)
    blend = fitted(name, probas, labels, frame)
    p = blend.predict(probas, frame)
    assert p.shape == (n, 3) and np.allclose(p.sum(1), 1) and (p > 0).all()
    again = blender_from_json(json.loads(json.dumps(blend.to_json())))
    np.testing.assert_allclose(again.predict(probas, frame), p, atol=1e-12)
    assert set(again.used_models()) <= {"m0", "m1"}
    binary = np.where(labels == 2, 0, labels)  # no ties: P(tie) at the add-one floor, not ~1e-15
    q = fitted(name, probas, binary, frame).predict(probas, frame)
    np.testing.assert_allclose(q[:, 2], 1.0 / (n + 3))
    assert np.allclose(q.sum(1), 1)


def test_bootstrap_interval_resamples_whole_groups():
    """Ten copies of every row: resampling rows treats them as independent and gives an interval about
    sqrt(10) narrower than resampling the groups (what a broken, row-level bootstrap would report)."""
    rng = np.random.default_rng(0)
    a, b = np.repeat(rng.normal(0.0, 1.0, 100), 10), np.zeros(1000)
    grouped = paired_diff_ci(a, b, np.arange(1000) // 10, 800, seed=1)
    rows = paired_diff_ci(a, b, np.arange(1000), 800, seed=1)
    assert (grouped[1] - grouped[0]) > 2.5 * (rows[1] - rows[0])
    assert paired_diff_ci(a, b, np.arange(1000) // 10, 800, seed=1) == grouped  # seeded: reruns agree


def test_bootstrap_interval_is_paired():
    """Two predictors whose row losses move together (loss spread 1, difference spread 0.01): the paired
    interval of the difference is as wide as the differences' own spread allows (about 0.0013) and
    excludes 0; resampling each side on its own (unpaired) gives an interval over 50 times wider. Breaks
    if the two sides are resampled apart, or if the interval is narrower than its level promises."""
    rng = np.random.default_rng(2)
    base = rng.exponential(1.0, 900)
    a, b = base, base + 0.02 + rng.normal(0, 0.01, 900)
    groups = np.arange(900) // 3
    lo, hi = paired_diff_ci(a, b, groups, 500, seed=0)
    assert hi < 0 < -lo  # b is worse by 0.02 on average
    # the 95% interval of a mean of 300 independent prompt means: 2 * 1.96 standard errors
    prompt_diff = np.bincount(groups, weights=a - b) / 3
    expected = 2 * 1.96 * prompt_diff.std() / np.sqrt(len(prompt_diff))
    assert 0.75 * expected < hi - lo < 1.25 * expected, (hi - lo, expected)
    # control: an unpaired bootstrap, each side's prompts drawn on their own
    prompt_a, prompt_b = np.bincount(groups, weights=a) / 3, np.bincount(groups, weights=b) / 3
    draws = [prompt_a[rng.integers(0, 300, 300)].mean() - prompt_b[rng.integers(0, 300, 300)].mean()
             for _ in range(500)]
    unpaired = np.subtract(*np.quantile(draws, [0.975, 0.025]))
    assert unpaired > 50 * (hi - lo) and 0 < np.quantile(draws, 0.975), (unpaired, hi - lo)


# ------------------------------------------------------------------------ the blend stage

def write_run(tmp_path, n: int, per_prompt: int = 2, seed: int = 0):
    models, labels, _ = synthetic_oof(n, seed)
    ids = [f"r{i}" for i in range(n)]
    frame = pd.DataFrame({"id": ids, "prompt": [[f"p{i // per_prompt}"] for i in range(n)],
                          "response_a": [["a"]] * n, "response_b": [["bb"]] * n, "label": labels})
    save_battles(tmp_path / "prepared" / "train.parquet", frame)
    fold_of = (np.arange(n) // per_prompt) % 3
    pd.DataFrame({"id": ids, "fold": fold_of}).to_parquet(tmp_path / "folds.parquet")
    order = np.random.default_rng(0).permutation(n)  # OOF rows in another order: aligned by id
    for name, p in zip(["m0", "m1", "m2"], models):
        (tmp_path / "oof").mkdir(exist_ok=True)
        proba_frame(np.array(ids)[order], p[order], fold_of[order]).to_parquet(tmp_path / "oof" / f"{name}.parquet")
        (tmp_path / "test").mkdir(exist_ok=True)  # models from elsewhere: their test predictions too
        proba_frame(["t0", "t1"], p[:2]).to_parquet(tmp_path / "test" / f"{name}.parquet")
    return labels


def test_run_writes_the_cross_fitted_blend_and_its_intervals(tmp_path):
    labels = write_run(tmp_path, 600)
    params = {"blend": {"models": ["m0", "m1", "m2"], "fixed_weights": {"m0": 0.2, "m2": 0.8}, "bootstrap": 200}}
    metrics = run(params, tmp_path, metrics_path=tmp_path / "headline.json")
    b = metrics["blend"]
    assert set(metrics["models"]) == {"m0", "m1", "m2"} and set(b["by_method"]) == set(BLENDERS)
    oof = pd.read_parquet(tmp_path / "blend_oof.parquet")  # the honest blend: its log loss is the reported one
    assert list(oof["label"]) == list(labels)
    assert (round(log_loss(labels, oof[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy()), 6)
            == b["log_loss"])
    assert b["log_loss"] == b["by_method"]["select"]["log_loss"] and b["insample"]["log_loss"] <= b["log_loss"] + 0.01
    lo, hi = b["diff_vs_best_ci"]
    assert lo < hi  # 300 prompts in 3 folds: a real interval, not the degenerate [x, x] of one group
    head = json.loads((tmp_path / "headline.json").read_text())
    assert head["blend"]["log_loss_crossfit"] == b["log_loss"] and "accuracy_crossfit" in head["blend"]
    scalars = [k for k, v in pd.json_normalize(head).iloc[0].items() if not isinstance(v, list)]
    assert len(scalars) <= 10, scalars  # dvc metrics show: these and the Path column
    run(params, tmp_path, metrics_path=tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == (tmp_path / "headline.json").read_text()  # seeded: reruns agree
    assert "log_loss" in metrics["fixed_blend"] and set(b["winner_tie"]) == {"precision", "recall", "f1", "support"}
    pd.read_parquet(tmp_path / "oof" / "m1.parquet").iloc[:-1].to_parquet(tmp_path / "oof" / "m1.parquet")
    with pytest.raises(DataError, match="m1.parquet: no OOF rows for 1 training ids"):
        run(params, tmp_path)
    with pytest.raises(DataError, match="no prediction file for model 'zz'"):
        run(params, tmp_path, ["zz"])


def test_method_override_and_bad_method(tmp_path, capsys):
    write_run(tmp_path, 300, per_prompt=3)
    (tmp_path / "params.yaml").write_text("blend:\n  models: [m0, m1]\n  bootstrap: 0\n")
    argv = ["--params", str(tmp_path / "params.yaml"), "--artifacts", str(tmp_path),
            "--metrics", str(tmp_path / "m.json")]
    assert fail_cleanly(lambda: main(argv + ["--method", "greedy"])) == 0
    assert json.loads((tmp_path / "blend.json").read_text())["method"] == "greedy"
    assert "blend greedy, crossfit" in capsys.readouterr().out
    assert fail_cleanly(lambda: main(argv + ["--method", "stak"])) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--method 'stak'" in err and "weights, greedy, stack" in err


@pytest.mark.parametrize("blend, message", [
    ({"stack": {"c_grid": []}}, "blend.stack.c_grid: [] is not allowed"),
    ({"stack": {"c_grid": [0.1, -1]}}, "blend.stack.c_grid: [0.1, -1] is not allowed"),
    ({"stack": {"c_grid": ["big"]}}, "holds 'big' (str); each element must be a number"),
    ({"stack": {"c_grid": 0.1}}, "must be a list"),
    ({"stack": {"inner_splits": 1}}, "blend.stack.inner_splits: 1 is not allowed"),
    ({"stack": {"meta_features": "yes"}}, "blend.stack.meta_features: 'yes' (str) must be true or false"),
    ({"stack": {"ridge": 1}}, "unknown key(s) ridge"),
    ({"method": "stacking"}, "blend.method: 'stacking' is not allowed; expected one of prior, best, weights"),
    ({"bootstrap": -5}, "blend.bootstrap: -5 is not allowed"),
    ({"greedy": {"rounds": 0}}, "blend.greedy.rounds: 0 is not allowed"),
    ({"select": {"candidates": ["weights", "magic"]}}, "blend.select.candidates: 'magic' is not a blender"),
    ({"models": ["lgbm", 3]}, "blend.models: ['lgbm', 3] (list) holds 3 (int); each element must be a string"),
])
def test_bad_blend_params_are_one_line_config_errors(blend, message):
    with pytest.raises(ConfigError) as err:
        from_dict(BlendConfig, blend, "blend")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_saved_blend_with_unknown_method_is_refused(tmp_path):
    from ensemble.pipeline.submit import read_blender

    (tmp_path / "blend.json").write_text(json.dumps({"method": "magic", "models": ["m"]}))
    with pytest.raises(DataError, match="blend.json: method 'magic' is not a blender of this version"):
        read_blender(tmp_path)
    (tmp_path / "blend.json").write_text(json.dumps({"method": "stack", "models": ["m"]}))
    with pytest.raises(DataError, match="blend.json: not a complete blend"):
        read_blender(tmp_path)
    assert np.allclose(apply_blend([np.full((2, 3), 1 / 3)], [1.0]).sum(1), 1)
    assert row_log_loss(np.array([0]), np.array([[1.0, 0.0, 0.0]]))[0] < 1e-9


def test_one_se_choice_uses_the_prompt_clustered_error_of_the_row_mean():
    """One row per prompt: the plain standard error of the mean difference. The same rows copied five times
    into their prompt: the same mean, the same clustered error (copies add no evidence), so the same choice;
    an unclustered error would shrink by sqrt(5) and pick the complex candidate. Breaks if the gap and the
    error are averaged differently or the error ignores the prompts."""
    from ensemble.blend.select import one_se_choice

    n = 40
    best = np.random.default_rng(0).normal(1.0, 0.3, n)
    simple = best + 0.03 + 0.3 * (-1.0) ** np.arange(n)  # worse on average by 0.03, within one error (0.048)
    se = (simple - best).std(ddof=1) / np.sqrt(n)
    assert 0 < (simple - best).mean() <= se
    assert one_se_choice({"simple": simple, "best": best}, np.arange(n)) == "simple"
    copies = {"simple": np.repeat(simple, 5), "best": np.repeat(best, 5)}
    assert one_se_choice(copies, np.repeat(np.arange(n), 5)) == "simple"
    assert one_se_choice(copies, np.arange(5 * n)) == "best"  # the same rows taken as independent
