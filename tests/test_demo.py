"""The synthetic demo set must be reproducible, parse like real data and carry a learnable signal."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from ensemble import TARGETS
from ensemble.core.data import read_battles
from ensemble.demo import main, make_demo

RAW_COLUMNS = ["id", "model_a", "model_b", "prompt", "response_a", "response_b", *TARGETS]
TEST_COLUMNS = ["id", "prompt", "response_a", "response_b"]


@pytest.fixture(scope="module")
def demo():
    return make_demo(1000, 200, seed=0)


@pytest.fixture(scope="module")
def written(tmp_path_factory, demo):
    out = tmp_path_factory.mktemp("demo")
    assert main(["--out-dir", str(out), "--n-train", "1000", "--n-test", "200", "--seed", "0"]) == 0
    return out


def test_same_seed_same_frames_and_other_seed_differs():
    train1, test1 = make_demo(150, 40, seed=7)
    train2, test2 = make_demo(150, 40, seed=7)
    pd.testing.assert_frame_equal(train1, train2)
    pd.testing.assert_frame_equal(test1, test2)
    other, _ = make_demo(150, 40, seed=8)
    assert not train1[["prompt", "response_a", "response_b"]].equals(other[["prompt", "response_a", "response_b"]])


def test_layout_and_ids(demo):
    train, test = demo
    assert list(train.columns) == RAW_COLUMNS
    assert list(test.columns) == TEST_COLUMNS
    assert (len(train), len(test)) == (1000, 200)
    assert train["id"].is_unique and test["id"].is_unique
    assert not set(train["id"]) & set(test["id"])
    assert (train[list(TARGETS)].sum(axis=1) == 1).all()
    assert (train["model_a"] != train["model_b"]).all()
    for col in ("prompt", "response_a", "response_b"):
        for frame in (train, test):
            cells = frame[col].map(json.loads)
            assert cells.map(lambda v: isinstance(v, list) and len(v) >= 1).all()
    # Every battle has as many answer turns as prompt turns.
    turns = [train[c].map(lambda s: len(json.loads(s))) for c in ("prompt", "response_a", "response_b")]
    assert (turns[0] == turns[1]).all() and (turns[0] == turns[2]).all()


def test_written_csv_round_trips(written):
    train = read_battles(written / "demo_train.csv", verbose=False)
    test = read_battles(written / "demo_test.csv", verbose=False)
    assert len(train) == 1000 and len(test) == 200  # nothing dropped as duplicate
    assert "label" in train and "label" not in test
    report = train.attrs["report"]
    assert sum(report.raw_cells.values()) == 0
    for frame in (train, test):
        for col in ("prompt", "response_a", "response_b"):
            # Lone surrogates must have been scrubbed so text encodes as UTF-8.
            for turns in frame[col]:
                for t in turns:
                    t.encode("utf-8")


def test_real_data_quirks_present(demo, written):
    train, _ = demo
    prompts = train["prompt"].map(json.loads)
    n_turns = prompts.map(len)
    assert 0.1 < (n_turns > 1).mean() < 0.3
    assert n_turns.max() <= 4
    assert 0.3 < prompts.map(tuple).duplicated(keep=False).mean() < 0.5
    cells = pd.concat([train[c] for c in ("prompt", "response_a", "response_b")]).map(json.loads)
    assert 0.005 < cells.map(lambda v: None in v).mean() < 0.04
    raw = (written / "demo_train.csv").read_text(encoding="utf-8")
    assert raw.isascii()  # like Kaggle: non-ASCII is JSON-escaped
    # json.loads joins valid pairs into one code point, so any surrogate left is a lone one.
    assert any(0xD800 <= ord(ch) <= 0xDFFF for v in cells for t in v if t for ch in t)
    texts = ["\n".join(t or "" for t in v) for v in cells]  # a list: pyarrow strings reject surrogates
    assert any(0x4E00 <= ord(ch) <= 0x9FFF for s in texts for ch in s)  # CJK text
    assert any(ord(ch) >= 0x1F300 for s in texts for ch in s)  # emoji
    answers = pd.concat([train["response_a"], train["response_b"]]).map(json.loads)
    assert answers.map(lambda v: all(not t for t in v)).any()  # an empty answer
    refusal = answers.map(lambda v: any(t and ("I'm sorry" in t or "As an AI" in t) for t in v))
    assert 0.01 < refusal.mean() < 0.2


def test_label_balance(demo):
    train, _ = demo
    share = train[list(TARGETS)].mean().to_numpy()
    assert np.all(share > 0.22) and np.all(share < 0.45), share


def test_signals_point_the_right_way(demo):
    train, _ = demo

    def length(col):
        return train[col].map(lambda s: sum(len(t or "") for t in json.loads(s)))

    longer_a = length("response_a") > 1.5 * length("response_b")
    longer_b = length("response_b") > 1.5 * length("response_a")
    assert train.loc[longer_a, "winner_model_a"].mean() > train.loc[longer_a, "winner_model_b"].mean() + 0.15
    assert train.loc[longer_b, "winner_model_b"].mean() > train.loc[longer_b, "winner_model_a"].mean() + 0.15


def test_signal_is_learnable(demo):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ensemble.core.data import parse_turns
    from ensemble.core.features import numeric_features

    train, _ = demo
    parsed = pd.DataFrame({"id": train["id"]})
    for col in ("prompt", "response_a", "response_b"):
        parsed[col] = [parse_turns(v)[0] for v in train[col]]
    X = numeric_features(parsed).to_numpy(dtype=np.float64)
    y = train[list(TARGETS)].to_numpy().argmax(axis=1)
    X_tr, X_ho, y_tr, y_ho = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000)).fit(X_tr, y_tr)
    loss = log_loss(y_ho, model.predict_proba(X_ho), labels=[0, 1, 2])
    prior = log_loss(y_ho, np.tile(np.bincount(y_tr, minlength=3) / len(y_tr), (len(y_ho), 1)), labels=[0, 1, 2])
    assert prior > 1.0
    assert loss < prior - 0.08, (loss, prior)
    assert loss > 0.5, "labels should stay noisy"


def test_generation_is_fast():
    start = time.perf_counter()
    make_demo(1000, 200, seed=1)
    assert time.perf_counter() - start < 6.0  # spec is < 2 s; slack for a shared CI machine


def test_empty_and_bad_sizes():
    train, test = make_demo(0, 0)
    assert list(train.columns) == RAW_COLUMNS and list(test.columns) == TEST_COLUMNS
    assert len(train) == len(test) == 0
    with pytest.raises(ValueError):
        make_demo(-1, 10)


def test_demo_stage_builds_nothing_when_data_points_at_real_files(tmp_path):
    """The `demo` DVC stage always runs; with data.train/test pointing at real files it builds no
    synthetic set (and removes one built before), pointing back at it builds it again."""
    from ensemble.demo import main

    out = tmp_path / "demo"
    assert main(["--out-dir", str(out), "--n-train", "20", "--n-test", "5",
                 "--used-by", str(out / "demo_train.csv"), str(out / "demo_test.csv")]) == 0
    assert (out / "demo_train.csv").is_file() and not (out / "NOT_USED.txt").exists()
    real = tmp_path / "real.csv"
    assert main(["--out-dir", str(out), "--used-by", str(real), str(real)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["NOT_USED.txt"]
