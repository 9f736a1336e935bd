"""Distillation and pseudo-labels (ensemble.pipeline.distill, ensemble.core.targets): a teacher that knows the signal
lifts a student, the honest mode never feeds a fold its own valid labels, pseudo-labels never train the
fold that validates their prompt, and bad distill input is one line before any training."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, marker_frame, raw_csv

from ensemble import TARGETS
from ensemble.core.config import ConfigError, from_dict
from ensemble.core.errors import DataError
from ensemble.core.fingerprint import read_done
from ensemble.core.folds import attach_folds, make_folds
from ensemble.core.metrics import log_loss
from ensemble.core.targets import SOFT_COLUMNS, DistillConfig, sharpen, weighted_copies
from ensemble.models.base import BaseModel
from ensemble.pipeline.distill import FILES, Teachers, check_teachers
from ensemble.pipeline.oof import run_oof

WORDS = "the cat sat on a mat while quick brown foxes jump over lazy dogs and we write code".split()
FAST = {"n_estimators": 60, "learning_rate": 0.1, "early_stopping_rounds": 10, "n_jobs": 1, "min_child_samples": 5,
        "vectorizer": {"max_features": 300, "min_df": 1}}
KEEP = 0.6  # a noisy label is the marker's verdict with this probability, else one of the other two classes


def noisy_frame(n: int, seed: int = 0, keep: float = KEEP) -> tuple[pd.DataFrame, np.ndarray]:
    """marker_frame battles whose observed label is the marker's verdict only with probability KEEP: few labels
    teach a model little, a teacher that reads the marker knows the Bayes probabilities. (frame, clean labels)"""
    frame = marker_frame(n, WORDS, "zebra", seed=seed)
    clean = frame["label"].to_numpy().copy()
    rng = np.random.default_rng(seed + 1)
    flip = rng.random(n) > keep
    frame.loc[flip, "label"] = (clean[flip] + rng.integers(1, 3, size=int(flip.sum()))) % 3
    return frame, clean


def oracle(frame: pd.DataFrame) -> np.ndarray:
    """The Bayes probabilities the planted signal allows, from the texts alone (no label read)."""
    has_a = frame["response_a"].map(lambda t: "zebra" in t[0].split()).to_numpy()
    has_b = frame["response_b"].map(lambda t: "zebra" in t[0].split()).to_numpy()
    verdict = np.where(has_a & ~has_b, 0, np.where(has_b & ~has_a, 1, 2))
    proba = np.full((len(frame), 3), (1 - KEEP) / 2)
    proba[np.arange(len(frame)), verdict] = KEEP
    return proba


def write_nested(folder: Path, frame: pd.DataFrame, fold_of: np.ndarray, proba: np.ndarray) -> None:
    """A teacher from elsewhere in the documented nested layout: per outer fold k, the rows outside k."""
    folder.mkdir(parents=True, exist_ok=True)
    blocks = []
    for k in np.unique(fold_of):
        rows = fold_of != k
        block = pd.DataFrame({"id": frame["id"][rows].to_numpy(), "outer_fold": int(k)})
        block[list(TARGETS)] = proba[rows]
        blocks.append(block)
    pd.concat(blocks).to_parquet(folder / FILES["nested"])


def oof_of(artifacts: Path, name: str, frame: pd.DataFrame) -> np.ndarray:
    oof = pd.read_parquet(artifacts / "oof" / f"{name}.parquet").set_index("id").loc[frame["id"]]
    return oof[list(TARGETS)].to_numpy()


def test_distill_a_teacher_that_knows_the_signal_lifts_a_student_trained_on_too_few_labels(tmp_path):
    """180 noisy labels: LightGBM alone learns little of the marker; distilled (weight 0.8) from a teacher from
    elsewhere that knows the Bayes probabilities, its OOF log loss on the held-out noisy labels drops by more
    than 0.05 and beats the prior. Breaks if the soft columns are ignored (the two runs are then identical),
    misaligned with their rows, or swapped wrongly under swap augmentation."""
    frame, _ = noisy_frame(180)
    folds = make_folds(frame, 3, seed=0)
    fold_of = attach_folds(frame, folds)
    write_nested(tmp_path / "teachers" / "oracle", frame, fold_of, oracle(frame))
    labels = frame["label"].to_numpy()
    run_oof("lgbm", FAST, frame, folds, tmp_path / "alone")
    student = {**FAST, "distill": {"teachers": ["oracle"], "weight": 0.8}}
    run_oof("lgbm", student, frame, folds, tmp_path / "distilled", teacher_dir=tmp_path / "teachers")
    alone, distilled = (log_loss(labels, oof_of(tmp_path / d, "lgbm", frame)) for d in ("alone", "distilled"))
    prior = log_loss(labels, np.tile(np.bincount(labels, minlength=3) / len(labels), (len(labels), 1)))
    assert distilled < alone - 0.05 and distilled < prior, (alone, distilled, prior)


def test_distill_nested_soft_labels_never_see_the_folds_own_valid_labels(tmp_path):
    """Poison fold k's labels in the teacher's input: the soft labels student fold k trains on do not change
    (nested teachers never fitted on fold k), while those of the other folds do. The leaky mode is the
    negative control: its fold-k soft labels change, since its teachers trained on fold k."""
    frame, _ = noisy_frame(150)
    fold_of = attach_folds(frame, make_folds(frame, 3, seed=0))
    params = {"lgbm": FAST}
    poisoned = frame.copy()
    k = 1
    poisoned.loc[fold_of == k, "label"] = (poisoned.loc[fold_of == k, "label"] + 1) % 3
    for mode in ("nested", "leaky"):
        cfg = DistillConfig(teachers=["lgbm"], mode=mode)
        clean = Teachers("student", cfg, params, frame, fold_of, tmp_path / mode / "clean")
        dirty = Teachers("student", cfg, params, poisoned, fold_of, tmp_path / mode / "dirty")
        same_k = np.allclose(clean.soft[k], dirty.soft[k], equal_nan=True)
        others = [np.allclose(clean.soft[j], dirty.soft[j], equal_nan=True) for j in range(3) if j != k]
        assert np.isnan(clean.soft[k][fold_of == k]).all() and not np.isnan(clean.soft[k][fold_of != k]).any()
        if mode == "nested":
            assert same_k and not any(others), (mode, same_k, others)
        else:
            assert not same_k, "the leaky control should see fold k's labels"


@pytest.fixture
def fits(monkeypatch) -> list[int]:
    """The training-row count of every model fit while the test runs."""
    counted: list[int] = []
    real_fit = BaseModel.fit

    def counting_fit(self: BaseModel, train: pd.DataFrame, valid: pd.DataFrame | None = None) -> BaseModel:
        counted.append(len(train))
        return real_fit(self, train, valid)

    monkeypatch.setattr(BaseModel, "fit", counting_fit)
    return counted


def test_nested_teacher_fits_once_per_pair_of_folds_and_labels_as_one_fit_per_ordered_pair(tmp_path, fits):
    """5 folds: the nested teacher is fitted 10 times (one per unordered pair of left-out folds), not 20, and
    every soft label equals the one a fit of its own gives: for outer fold k, fold j's rows predicted by a
    teacher fitted on the rows outside folds k and j. Breaks if a pair's fit labels the wrong fold, or if
    each ordered pair is fitted again."""
    from ensemble.models import create

    frame, _ = noisy_frame(150)
    fold_of = attach_folds(frame, make_folds(frame, 5, seed=0))
    teachers = Teachers("student", DistillConfig(teachers=["lgbm"]), {"lgbm": FAST}, frame, fold_of, tmp_path)
    assert len(fits) == 10
    for k in range(5):
        for j in range(5):
            if j == k:
                continue
            outside = frame[(fold_of != k) & (fold_of != j)].reset_index(drop=True)
            own = create("lgbm", FAST).fit(outside).predict_proba(frame[fold_of == j].reset_index(drop=True))
            np.testing.assert_array_equal(teachers.soft[k][fold_of == j], own)


def test_a_students_teacher_reuses_the_teachers_saved_folds_only_when_they_match(tmp_path, monkeypatch, fits):
    """Leaky mode: after the teacher's own OOF run, the student's teacher fits nothing and its soft labels
    are the teacher's OOF predictions; a fold whose saved fingerprint does not match is refitted, alone; a
    teacher whose valid rows chose its rounds (early_stopping: valid) is refitted on every fold. Breaks if
    saved folds are never reused, reused without their fingerprint, or reused when the valid rows chose."""
    import json

    frame, _ = noisy_frame(150)
    folds = make_folds(frame, 3, seed=0)
    fold_of = attach_folds(frame, folds)

    def student(config: dict, artifacts: Path, root: str) -> Teachers:
        fits.clear()
        return Teachers("student", DistillConfig(teachers=["lgbm"], mode="leaky"), {"lgbm": config}, frame,
                        fold_of, tmp_path / root, saved=artifacts / "models")

    run_oof("lgbm", FAST, frame, folds, tmp_path / "a")
    reused = student(FAST, tmp_path / "a", "s1")
    assert fits == []
    oof = oof_of(tmp_path / "a", "lgbm", frame)
    for k in range(3):
        np.testing.assert_array_equal(reused.soft[k][fold_of != k], oof[fold_of != k])
    done = tmp_path / "a" / "models" / "lgbm" / "fold_1" / "done.json"
    done.write_text(json.dumps({**json.loads(done.read_text()), "fingerprint": "another fit"}))
    student(FAST, tmp_path / "a", "s2")
    assert fits == [int((fold_of != 1).sum())]
    peeking = {**FAST, "early_stopping": "valid"}
    run_oof("lgbm", peeking, frame, folds, tmp_path / "b")
    student(peeking, tmp_path / "b", "s3")
    assert len(fits) == 3


def test_pseudo_labels_come_from_the_fold_model_and_never_train_the_fold_of_their_prompt(tmp_path):
    """Unlabelled battles: those whose prompt the labelled data holds join every fold but that prompt's fold;
    the others join all folds; fold k's pseudo-labels come from the teacher fitted without fold k (poisoning
    fold k's labels leaves them unchanged, and changes the other folds': the control); the margin filter
    drops the uncertain ones; the report counts all of it."""
    frame, _ = noisy_frame(150, keep=0.9)  # a teacher that learns: pseudo-labels with margins to filter
    fold_of = attach_folds(frame, make_folds(frame, 3, seed=0))
    extra, _ = noisy_frame(60, seed=7)
    shared = frame.iloc[::5].reset_index(drop=True)  # 30 battles asking a labelled battle's prompt
    unlabelled = pd.concat([extra, shared.assign(response_a=shared["response_b"], response_b=shared["response_a"])],
                           ignore_index=True).drop(columns="label")
    unlabelled["id"] = [f"u{i}" for i in range(len(unlabelled))]
    cfg = DistillConfig(teachers=["lgbm"], weight=1.0)
    teachers = Teachers("student", cfg, {"lgbm": FAST}, frame, fold_of, tmp_path / "clean", unlabelled=unlabelled)
    prompt_fold = fold_of[::5]
    for k in range(3):
        part = teachers.fold_frame(k, np.flatnonzero(fold_of != k))
        ids = set(part.loc[part["pseudo"], "id"])
        shared_ids = {f"u{60 + i}" for i in range(30)}
        assert {f"u{i}" for i in range(60)} <= ids  # unknown prompts train every fold
        assert ids & shared_ids == {f"u{60 + i}" for i in np.flatnonzero(prompt_fold != k)}
        pseudo = part[part["pseudo"]]
        np.testing.assert_array_equal(pseudo["label"], pseudo[list(SOFT_COLUMNS)].to_numpy().argmax(1))
    report = teachers.pseudo_report()
    assert report["unlabelled_rows"] == 90 and report["grouped_with_labelled_prompts"] == 30
    assert [f["withheld_same_prompt"] for f in report["per_fold"]] == [int((prompt_fold == k).sum()) for k in range(3)]
    k = 0
    poisoned = frame.copy()
    poisoned.loc[fold_of == k, "label"] = (poisoned.loc[fold_of == k, "label"] + 1) % 3
    dirty = Teachers("student", cfg, {"lgbm": FAST}, poisoned, fold_of, tmp_path / "dirty", unlabelled=unlabelled)
    assert np.allclose(teachers.pseudo_soft[k], dirty.pseudo_soft[k])
    assert not np.allclose(teachers.pseudo_soft[1], dirty.pseudo_soft[1])  # control: fold 1's teacher saw fold 0
    p = teachers.pseudo_soft[0]
    gaps = np.unique(np.abs(p[:, 0] - p[:, 1]))
    cut = float(gaps[len(gaps) // 2])  # a cut inside the spread of the teacher's margins
    margin = Teachers("student", DistillConfig(teachers=["lgbm"], pseudo_margin=cut), {"lgbm": FAST}, frame,
                      fold_of, tmp_path / "clean", unlabelled=unlabelled)  # the cached teacher fits
    kept = margin.fold_frame(0, np.flatnonzero(fold_of != 0))
    expected = (np.abs(p[:, 0] - p[:, 1]) >= cut) & (teachers.pseudo_fold != 0)
    assert 0 < int(kept["pseudo"].sum()) == int(expected.sum()) < int((teachers.pseudo_fold != 0).sum())


def test_pseudo_labels_through_run_oof_retrain_only_when_the_teacher_changes(tmp_path, monkeypatch):
    """A student with a teacher from elsewhere and unlabelled battles: a rerun reuses every fold (no fit
    runs), a changed teacher file retrains them all (the fold identity holds the teacher's files), and the student
    learns. Breaks if a rerun retrains a finished fold, or if a changed teacher reuses one."""
    frame, clean = noisy_frame(120)
    folds = make_folds(frame, 3, seed=0)
    fold_of = attach_folds(frame, folds)
    unlabelled, _ = noisy_frame(120, seed=3)
    unlabelled = unlabelled.drop(columns="label").assign(id=[f"u{i}" for i in range(120)])
    folder = tmp_path / "teachers" / "oracle"
    write_nested(folder, frame, fold_of, oracle(frame))
    rows = [pd.DataFrame({"id": unlabelled["id"], "fold": k, **dict(zip(TARGETS, oracle(unlabelled).T))})
            for k in range(3)]
    pd.concat(rows).to_parquet(folder / FILES["pseudo"])
    student = {**FAST, "distill": {"teachers": ["oracle"], "weight": 0.8}}

    fits: list[int] = []  # rows of each model.fit call: how many folds a run trained
    real_fit = BaseModel.fit

    def counting_fit(self: BaseModel, train: pd.DataFrame, valid: pd.DataFrame | None = None) -> BaseModel:
        fits.append(len(train))
        return real_fit(self, train, valid)

    monkeypatch.setattr(BaseModel, "fit", counting_fit)

    def run() -> tuple[int, list[str]]:
        """(folds trained by this run, each fold's fingerprint)"""
        before = len(fits)
        run_oof("lgbm", student, frame, folds, tmp_path / "a", unlabelled=unlabelled, teacher_dir=tmp_path / "teachers")
        done = [read_done(tmp_path / "a" / "models" / "lgbm" / f"fold_{k}")["fingerprint"] for k in range(3)]
        return len(fits) - before, done

    trained, first = run()
    assert trained == 3
    assert run() == (0, first)  # a rerun: every fold reused, none trained
    proba = oof_of(tmp_path / "a", "lgbm", frame)
    assert log_loss(clean, proba) < log_loss(clean, np.full((len(clean), 3), 1 / 3)) - 0.1
    write_nested(folder, frame, fold_of, sharpen(oracle(frame), 2.0))
    trained, changed = run()
    assert trained == 3 and all(a != b for a, b in zip(changed, first))


def test_weighted_copies_and_sharpen():
    """Three copies per row, class-major, weighted by the target; hard labels one copy of weight 1. Temperature
    1 is the identity, a higher one flattens."""
    rows, labels, weights = weighted_copies(np.array([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0]]))
    assert rows.tolist() == [0, 1, 0, 1, 0, 1] and labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert weights.tolist() == [0.2, 1.0, 0.5, 0.0, 0.3, 0.0]
    p = np.array([[0.7, 0.2, 0.1]])
    np.testing.assert_allclose(sharpen(p, 1.0), p)
    assert sharpen(p, 3.0).max() < 0.7 and sharpen(p, 0.5).max() > 0.7


def test_paired_batches_put_a_battle_and_its_swap_in_one_step():
    """swap_augment: paired: every batch holds items i and i + n together, each item once per epoch; the
    unpaired sampler (control) splits most pairs."""
    from ensemble.nn.batching import LengthGroupedBatches

    n, lengths = 40, np.random.default_rng(0).integers(5, 50, size=40)
    both = np.concatenate([lengths, lengths])
    paired = list(LengthGroupedBatches(both, 8, seed=0, paired=True))
    assert sorted(i for b in paired for i in b) == list(range(2 * n))
    assert all(set(b) == {i % n for i in b} | {i % n + n for i in b} for b in paired) and max(map(len, paired)) == 8
    plain = list(LengthGroupedBatches(both, 8, seed=0))
    assert sum(set(b) == {i % n for i in b} | {i % n + n for i in b} for b in plain) < len(plain) / 2


def test_soft_targets_reach_the_transformers_batches_swapped_with_their_answers():
    """The dual tower's swapped items carry the soft targets with A and B exchanged; the LLM's batches carry
    float targets (torch's probability cross-entropy). Breaks if the swap forgets the targets."""
    from ensemble.nn.batching import collate_battles, collate_towers

    t = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    enc = {"a": [[1, 2], [3]], "b": [[4], [5, 6]], "features": None}
    batch = collate_towers([0, 3], enc, t, pad_id=0)
    np.testing.assert_allclose(batch["labels"].numpy(), [[0.7, 0.2, 0.1], [0.6, 0.1, 0.3]], rtol=1e-6)
    hard = collate_towers([0, 3], enc, np.array([0, 1]), pad_id=0)["labels"]
    assert hard.tolist() == [0, 0] and hard.dtype.is_floating_point is False
    llm = collate_battles([1], [[1, 2], [3]], [[0, 1], [1]], 0, labels=t)["labels"]
    assert llm.dtype.is_floating_point and llm.shape == (1, 3)


def test_dual_tower_learns_from_soft_targets_alone(tmp_path, tiny_backbone, one_torch_thread):
    """The labels are noise (shuffled), the teacher knows the marker: trained with distill weight 1 and paired
    swaps, the dual tower's OOF predictions beat the uniform guess on the clean verdicts. Breaks if the loss
    reads the labels instead of the soft targets, or if paired batches break training."""
    frame, clean = noisy_frame(150)
    frame["label"] = np.random.default_rng(0).permutation(frame["label"].to_numpy())
    folds = make_folds(frame, 3, seed=0)
    write_nested(tmp_path / "teachers" / "oracle", frame, attach_folds(frame, folds), oracle(frame))
    config = {"backbone": tiny_backbone, "max_len": 32, "freeze_layers": 0, "use_features": False, "calib_frac": 0.0,
              "swap_augment": "paired", "device": "cpu", "head_lr": 0.01,
              "train": {"epochs": 6, "batch_size": 16, "lr": 3e-3, "patience": 0, "seed": 0},
              "distill": {"teachers": ["oracle"], "weight": 1.0}}
    run_oof("dual_tower", config, frame, folds, tmp_path / "a", teacher_dir=tmp_path / "teachers")
    proba = oof_of(tmp_path / "a", "dual_tower", frame)
    assert log_loss(clean, proba) < np.log(3) - 0.1, log_loss(clean, proba)


# ----------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("values, key, says", [
    ({"temperature": 0}, "temperature", "a number > 0"), ({"weight": 1.5}, "weight", "a number in [0, 1]"),
    ({"mode": "sloppy"}, "mode", "one of nested, leaky"), ({"teachers": ["a", "a"]}, "teachers", "twice")])
def test_distill_bad_params_name_the_key_and_what_is_allowed(values, key, says):
    with pytest.raises(ConfigError) as err:
        from_dict(DistillConfig, values, "lgbm.distill")
    assert f"lgbm.distill.{key}" in str(err.value) and says in str(err.value)


def test_distill_bad_teachers_are_refused_before_training(tmp_path):
    """A teacher that does not exist, the student itself, a teacher that distils, a nested file with the
    valid fold's own rows or missing ids: one clear error each."""
    cases = {"nobody": "is not a registered model and", "lgbm": "is the student itself"}
    for name, says in cases.items():
        with pytest.raises(ConfigError, match=says):
            check_teachers("lgbm", {"lgbm": {"distill": {"teachers": [name]}}}, tmp_path)
    with pytest.raises(ConfigError, match="distils from"):
        check_teachers("lgbm", {"lgbm": {"distill": {"teachers": ["dual_tower"]}},
                                "dual_tower": {"distill": {"teachers": ["lgbm"]}}}, tmp_path)
    frame, _ = noisy_frame(60)
    fold_of = attach_folds(frame, make_folds(frame, 3, seed=0))
    cfg = DistillConfig(teachers=["ext"])
    leaky_rows = pd.DataFrame({"id": frame["id"], "outer_fold": 0, **dict(zip(TARGETS, oracle(frame).T))})
    (tmp_path / "ext").mkdir()
    leaky_rows.to_parquet(tmp_path / "ext" / FILES["nested"])
    with pytest.raises(DataError, match="outer_fold 0: rows for fold 0's own valid id"):
        Teachers("lgbm", cfg, {}, frame, fold_of, tmp_path / "cache", teacher_dir=tmp_path)
    write_nested(tmp_path / "ext", frame.iloc[5:], fold_of[5:], oracle(frame.iloc[5:]))
    with pytest.raises(DataError, match="no row for training id"):
        Teachers("lgbm", cfg, {}, frame, fold_of, tmp_path / "cache", teacher_dir=tmp_path)
    stranger = frame.assign(id=[f"s{i}" if i == 0 else v for i, v in enumerate(frame["id"])])
    write_nested(tmp_path / "ext", pd.concat([frame, stranger.iloc[:1]]), np.append(fold_of, fold_of[0]),
                 oracle(pd.concat([frame, stranger.iloc[:1]])))
    with pytest.raises(DataError, match="id\\(s\\) that are not training ids: s0"):
        Teachers("lgbm", cfg, {}, frame, fold_of, tmp_path / "cache", teacher_dir=tmp_path)


def test_pseudo_rows_never_calibrate_and_those_asking_a_held_out_prompt_do_not_train():
    """calibration_split with pseudo rows: the held-out rows are labelled ones; a pseudo row whose prompt is
    held out is in neither part (its teacher saw that prompt's labels); without pseudo rows the split is the
    plain prompt-grouped one (control: the same rows as a frame without the column)."""
    from ensemble.core.calibration import calibration_split

    frame, _ = noisy_frame(120)
    fit0, cal0 = calibration_split(frame, 0.25, 0)
    pseudo = frame.assign(pseudo=False)
    np.testing.assert_array_equal(calibration_split(pseudo, 0.25, 0)[1], cal0)
    extra = frame.iloc[::3].assign(pseudo=True, id=lambda f: "p" + f["id"])
    both = pd.concat([pseudo, extra], ignore_index=True)
    fit, cal = calibration_split(both, 0.25, 0)
    np.testing.assert_array_equal(cal, cal0)
    held_prompts = set(both["prompt"].iloc[cal].map(tuple))
    asks_held = both["prompt"].map(tuple).isin(held_prompts).to_numpy()
    assert not both["pseudo"].to_numpy()[cal].any()
    assert set(fit) == set(np.flatnonzero(~asks_held)) and (asks_held & both["pseudo"].to_numpy()).any()


def test_the_probes_c_is_chosen_on_labelled_rows_only(monkeypatch):
    """The LLM probe's inner CV holds out and scores the labelled rows only: its held-out rows are
    exactly them, and its CV log loss is the chosen C's on them. Breaks if pseudo rows are held out or
    scored."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    import ensemble.core.folds as folds
    from ensemble.core.calibration import proba3
    from ensemble.models.llm.probe import fit_linear_probe

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4))
    y = np.where(x[:, 0] > 0.3, 0, np.where(x[:, 0] < -0.3, 1, 2))
    groups, labelled = np.arange(120) // 2, np.arange(120) % 4 != 0  # a quarter pseudo-labelled
    seen: list = []
    real = folds.labelled_splits
    monkeypatch.setattr(folds, "labelled_splits", lambda *args: seen.append(real(*args)) or seen[-1])
    probe = fit_linear_probe(x, y, groups, [0.01, 0.1, 1.0], labelled=labelled)
    held = np.concatenate([b for _, b in seen[0]])
    np.testing.assert_array_equal(np.sort(held), np.flatnonzero(labelled))
    z, pred = StandardScaler().fit_transform(x), np.zeros((120, 3))
    for fit, out in seen[0]:
        pred[out] = proba3(LogisticRegression(C=probe.C, max_iter=1000).fit(z[fit], y[fit]), z[out])
    assert probe.cv_log_loss == pytest.approx(log_loss(y[labelled], pred[labelled]), rel=1e-9)


def _prepare(tmp_path, unlabelled):
    frame, _ = noisy_frame(30)
    train = raw_csv(frame, tmp_path / "train.csv")
    test = raw_csv(frame.iloc[:5].assign(id=[f"t{i}" for i in range(5)]), tmp_path / "test.csv", labels=False)
    (tmp_path / "params.yaml").write_text(f"data:\n  train: {train}\n  test: {test}\n  unlabelled: {unlabelled}\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("DVC_STAGE", None)
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "prepare.py"), "out"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    return proc, frame


@pytest.mark.parametrize("case", ["labels", "clash", "fine"])
def test_prepare_checks_the_unlabelled_file(tmp_path, case):
    """An unlabelled file with labels, or with training ids: one line, exit 2, nothing written; a good one is
    written beside train.parquet."""
    other, _ = noisy_frame(20, seed=5)
    other["id"] = [f"x{i}" for i in range(20)] if case != "clash" else [str(i) for i in range(20)]
    if case == "clash":
        other["id"] = marker_frame(20, WORDS, "zebra")["id"]
    path = raw_csv(other, tmp_path / "unlabelled.csv", labels=case == "labels")
    proc, _ = _prepare(tmp_path, path)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    if case == "fine":
        assert proc.returncode == 0, proc.stderr
        assert len(pd.read_parquet(tmp_path / "out" / "unlabelled.parquet")) == 20
        return
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(path) in errors[0] and ("holds labels" if case == "labels" else "also in the training file") in errors[0]
    assert not (tmp_path / "out").exists()


def test_teachers_stage_changes_a_students_file_when_its_teacher_changes_and_no_other(tmp_path):
    """stages/teachers.py: dual_tower distils from lgbm; an lgbm edit changes dual_tower's file (its DVC dep)
    and leaves lgbm's and llm's unchanged; a bad teacher is one line and exit 2."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["dual_tower"]["distill"]["teachers"] = ["lgbm"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def run() -> tuple[subprocess.CompletedProcess, dict]:
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        proc = subprocess.run([sys.executable, str(ROOT / "stages" / "teachers.py"), "out", "--teachers", "none"],
                              cwd=tmp_path, env=env, capture_output=True, text=True)
        files = {p.stem: p.read_text() for p in (tmp_path / "out").glob("*.json")}
        return proc, files

    proc, first = run()
    assert proc.returncode == 0, proc.stderr
    params["lgbm"]["num_leaves"] = 7
    _, second = run()
    assert second["dual_tower"] != first["dual_tower"]
    assert second["lgbm"] == first["lgbm"] and second["llm"] == first["llm"]
    params["dual_tower"]["distill"]["teachers"] = ["nobody"]
    proc, _ = run()
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "'nobody' is not a registered model" in errors[0]
