import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, battle_frame, raw_csv

from ensemble.core.data import (
    DataError,
    class_counts,
    parse_turns,
    read_battles,
    save_battles,
    scrub,
    swap_ab,
    unswap_proba,
)


def test_real_kaggle_rows_parse(shared_data):
    path = shared_data / "lmsys_train_first100.csv"
    frame = read_battles(path)
    assert len(frame) == 100  # every id survives
    raw = pd.read_csv(path, dtype=str)
    assert list(frame["id"]) == list(raw["id"])
    assert (frame["prompt"].map(len) > 1).sum() == 16  # multi-turn rows keep their turns
    assert frame["prompt"].map(len).equals(frame["response_a"].map(len))
    for col in ("prompt", "response_a", "response_b"):
        assert frame[col].map(lambda t: all(isinstance(x, str) for x in t)).all()
        frame[col].map(lambda t: [x.encode("utf-8") for x in t])  # no lone surrogates left
    assert np.bincount(frame["label"]).tolist() == [31, 33, 36]


def test_null_turns_surrogates_and_raw_cells(tmp_path):
    path = tmp_path / "t.csv"
    rows = [
        {"id": "1", "prompt": json.dumps(["hi", None]), "response_a": '["a \\ud83d b", null]',
         "response_b": "not json at all", "winner_model_a": 1, "winner_model_b": 0, "winner_tie": 0},
        {"id": "2", "prompt": '["x"]', "response_a": '["\\ud83d\\ude00 ok"]', "response_b": '"a string"',
         "winner_model_a": 0, "winner_model_b": 0, "winner_tie": 1},
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    frame = read_battles(path)
    assert frame.loc[0, "prompt"] == ["hi", ""]
    assert frame.loc[0, "response_a"] == ["a  b", ""]
    assert frame.loc[1, "response_a"] == ["\U0001F600 ok"]  # a valid pair is kept
    assert frame.loc[0, "response_b"] == ["not json at all"]
    assert frame.attrs["report"].raw_cells["response_b"] == 2
    assert frame["label"].tolist() == [0, 2]


def test_scrub_and_parse_helpers():
    assert scrub("plain") == "plain"
    assert scrub("x\ud83dy") == "xy"
    assert parse_turns("[1, null]") == (["1", ""], False)
    assert parse_turns("{") == (["{"], True)


def test_exact_duplicate_battles_dropped(tmp_path):
    frame = battle_frame(20)
    dup = frame.iloc[[3, 5]].assign(id=["d3", "d5"])
    path = raw_csv(pd.concat([frame, dup]), tmp_path / "t.csv")
    out = read_battles(path)
    assert len(out) == 20
    assert out.attrs["report"].duplicates_dropped == 2
    assert "d3" not in set(out["id"])


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.drop(columns=["response_b"]), "missing required column(s) response_b"),
    (lambda d: d.drop(columns=["winner_tie"]), "missing label column(s) winner_tie"),
    (lambda d: d.assign(id=["7"] * len(d)), "duplicate values: 7"),
    (lambda d: d.assign(winner_tie=1), "exactly one 1"),
    (lambda d: d.assign(winner_model_a=d["winner_model_a"].astype(str).where(d.index != 4, "yes")),
     "column winner_model_a must hold 0 or 1; bad values in rows with id 4"),
    (lambda d: d.assign(id=d["id"].astype(str).where(d.index != 4, " ")), "column id is empty on line(s) 6"),
])
def test_bad_input_names_file_column_rows(tmp_path, mutate, message):
    path = tmp_path / "bad.csv"
    mutate(pd.read_csv(raw_csv(battle_frame(10), tmp_path / "ok.csv"))).to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        read_battles(path, labels=True)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_class_counts_name_every_class():
    assert class_counts([0, 0, 1]) == {"A wins": 2, "B wins": 1, "tie": 0}
    assert class_counts(np.array([], dtype=int)) == {"A wins": 0, "B wins": 0, "tie": 0}


def test_single_class_training_file_refused(tmp_path):
    path = raw_csv(battle_frame(10).assign(label=0), tmp_path / "a.csv")
    with pytest.raises(DataError) as err:
        read_battles(path, labels=True)
    assert str(err.value) == (f"{path}: the labels hold a single class (A wins 10, B wins 0, tie 0); "
                              f"training needs at least two of A wins / B wins / tie")
    assert len(read_battles(path, labels=None)) == 10  # a labelled test file may hold one class
    no_ties = raw_csv(battle_frame(10).assign(label=[0, 1] * 5), tmp_path / "b.csv")
    assert set(read_battles(no_ties, labels=True)["label"]) == {0, 1}  # binary data is fine


def test_label_column_of_prepared_files_checked(tmp_path):
    path = tmp_path / "train.parquet"
    save_battles(path, battle_frame(6).assign(label=[0, 1, 2, 3, 0, 1]))
    with pytest.raises(DataError) as err:
        read_battles(path, labels=True)
    assert str(err.value) == f"{path}: column label must hold 0, 1 or 2; bad values in rows with id 3"


def test_empty_unreadable_and_missing_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    header = tmp_path / "header.csv"
    header.write_text("id,prompt,response_a,response_b\n")
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"id,prompt\n\xff\xfe\x00bad")
    for path, message in [(empty, "empty"), (header, "no rows"), (binary, "UTF-8"),
                          (tmp_path / "nope.csv", "not found"), (tmp_path, "directory")]:
        with pytest.raises(DataError, match=message):
            read_battles(path)


def test_test_files_need_no_labels(tmp_path):
    path = raw_csv(battle_frame(8), tmp_path / "test.csv", labels=False)
    frame = read_battles(path, labels=None)
    assert "label" not in frame and len(frame) == 8


def test_cli_exit_code_and_message(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,prompt\n1,x\n")
    proc = subprocess.run([sys.executable, "-m", "ensemble.submit", str(bad), "-o", str(tmp_path / "s.csv")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr and "response_a" in proc.stderr
    assert not (tmp_path / "s.csv").exists()


def test_swap_roundtrip():
    frame = battle_frame(12)
    twice = swap_ab(swap_ab(frame))
    pd.testing.assert_frame_equal(twice, frame)
    assert (swap_ab(frame)["label"].to_numpy() == np.array([1, 0, 2])[frame["label"].to_numpy()]).all()
    p = np.array([[0.7, 0.2, 0.1]])
    assert unswap_proba(p).tolist() == [[0.2, 0.7, 0.1]]
