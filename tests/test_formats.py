"""File types (CSV / JSONL / parquet) and layouts (kaggle, prompt/chosen/rejected, chosen/rejected) of read_battles,
the binary (no-tie) checks of the prepare stage, and the one-line errors for malformed files."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, battle_frame, raw_csv

from ensemble.core.data import DataError, class_counts, format_counts, read_battles, save_battles
from ensemble.core.preference import chosen_side, content_id

PCR = "prompt/chosen/rejected"


def msgs(*pairs):
    """msgs("user", "hi", "assistant", "yo") -> a chat-message list."""
    return [{"role": r, "content": c} for r, c in zip(pairs[::2], pairs[1::2])]


def write(path, records):
    """Records as a CSV (message lists JSON-encoded, as a CSV must carry them), JSONL or parquet file."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif path.suffix == ".csv":
        pd.DataFrame([{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in records]
                     ).to_csv(path, index=False)
    else:
        pd.DataFrame(records).to_parquet(path, index=False)
    return path


def chosen_and_rejected(frame):
    """Per row (chosen turns, rejected turns), undoing the coin: label 0 = chosen on side A."""
    return [(a, b) if label == 0 else (b, a)
            for a, b, label in zip(frame["response_a"], frame["response_b"], frame["label"])]


def hh(*turns):
    """hh("q1", "a1", "q2", "a2") -> the HH-RLHF string form."""
    return "".join(f"\n\n{'Human' if k % 2 == 0 else 'Assistant'}: {t}" for k, t in enumerate(turns))


# ------------------------------------------------------------------------------------ layouts

@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_prompt_chosen_rejected_strings(tmp_path, suffix):
    """Breaks if: chosen is not put where the label says, a prompt string is not one user turn, the id
    depends on the file type or cell form, or the report does not name the layout."""
    rows = [{"prompt": f"question {i}", "chosen": f"good answer {i}", "rejected": f"bad answer {i}",
             "score_chosen": 8.5, "source": "evol"} for i in range(40)]
    frame = read_battles(write(tmp_path / f"pref{suffix}", rows), verbose=False)
    assert list(frame.columns) == ["id", "prompt", "response_a", "response_b", "label"]
    assert frame["prompt"].tolist() == [[f"question {i}"] for i in range(40)]
    assert chosen_and_rejected(frame) == [([f"good answer {i}"], [f"bad answer {i}"]) for i in range(40)]
    assert set(frame["label"]) == {0, 1}
    assert frame["id"].tolist() == [content_id([f"question {i}"], [f"good answer {i}"], [f"bad answer {i}"])
                                    for i in range(40)]
    report = frame.attrs["report"]
    assert report.layout == PCR and report.detail == "strings"
    assert report.chosen_on_a == int((frame["label"] == 0).sum())
    assert report.summary() == (f"{tmp_path / f'pref{suffix}'}: 40 rows, layout {PCR} (strings), chosen put on side A "
                                f"in {report.chosen_on_a} rows, ids derived from the texts")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_chat_messages_multi_turn_prompt_with_system(tmp_path, suffix):
    """A multi-turn prompt: user turns become the prompt, the shared assistant turn is on both sides, the system
    message is prepended to the first user turn. Breaks if the shared answer is dropped or put on one side only,
    the system text is lost or made a turn, or JSON-encoded message lists in a CSV are read as raw text."""
    prompt = msgs("system", "Be brief.", "user", "Hi", "assistant", "Hello!", "user", "What is 2+2?")
    rows = [{"prompt": prompt, "chosen": msgs("assistant", "4"), "rejected": msgs("assistant", "5")},
            {"prompt": msgs("user", "Name a colour"), "chosen": msgs("assistant", "red"),
             "rejected": msgs("assistant", "seven")}]
    frame = read_battles(write(tmp_path / f"chat{suffix}", rows), labels=False, verbose=False)
    assert "label" not in frame  # a test file: the known preference is dropped
    assert frame["prompt"].tolist() == [["Be brief.\n\nHi", "What is 2+2?"], ["Name a colour"]]
    both = read_battles(tmp_path / f"chat{suffix}", verbose=False)
    assert chosen_and_rejected(both) == [(["Hello!", "4"], ["Hello!", "5"]), (["red"], ["seven"])]
    assert both.attrs["report"].detail == "chat messages"


def test_answers_that_repeat_the_prompt(tmp_path):
    """HuggingFaceH4/ultrafeedback_binarized: prompt a string, chosen / rejected the whole conversation.
    Breaks if the repeated prompt is not stripped (it would become an extra turn or an alternation error)."""
    rows = [{"prompt": "Write a haiku", "chosen": msgs("user", "Write a haiku", "assistant", "old pond / frog"),
             "rejected": msgs("user", "Write a haiku", "assistant", "no"), "score_chosen": 9.0, "score_rejected": 2.0}]
    frame = read_battles(write(tmp_path / "uf.parquet", rows), verbose=False)
    assert frame["prompt"].tolist() == [["Write a haiku"]]
    assert chosen_and_rejected(frame) == [(["old pond / frog"], ["no"])]


def test_hh_rlhf_dialogue_with_two_turns(tmp_path):
    """Breaks if the HH string is not split at its Human:/Assistant: markers, the marker's space is kept,
    or the shared first answer is not on both sides."""
    rows = [{"chosen": hh("How do I boil an egg?", "Put it in boiling water.", "For how long?", "About 9 minutes."),
             "rejected": hh("How do I boil an egg?", "Put it in boiling water.", "For how long?", "An hour.")},
            {"chosen": "\n\nHuman:   Say hi  \n\nAssistant: Hi!\n", "rejected": hh("Say hi", "No.")}]  # spaces dropped
    frame = read_battles(write(tmp_path / "hh.jsonl", rows), verbose=False)
    assert frame["prompt"].tolist() == [["How do I boil an egg?", "For how long?"], ["Say hi"]]
    assert chosen_and_rejected(frame) == [(["Put it in boiling water.", "About 9 minutes."],
                                           ["Put it in boiling water.", "An hour."]), (["Hi!"], ["No."])]
    assert frame.attrs["report"].layout == "chosen/rejected"
    assert frame.attrs["report"].detail == "HH dialogue strings"


def test_implicit_prompt_message_lists(tmp_path):
    """trl-lib style: chosen / rejected are whole message lists (parquet list<struct> cells)."""
    shared = ("system", "You are terse.", "user", "2+2?", "assistant", "4", "user", "times 3?")
    rows = [{"chosen": msgs(*shared, "assistant", "12"), "rejected": msgs(*shared, "assistant", "7")}]
    frame = read_battles(write(tmp_path / "trl.parquet", rows), verbose=False)
    assert frame["prompt"].tolist() == [["You are terse.\n\n2+2?", "times 3?"]]
    assert chosen_and_rejected(frame) == [(["4", "12"], ["4", "7"])]


def test_sides_are_stable_balanced_and_follow_the_seed(tmp_path):
    """Breaks if the coin uses row order or a global RNG (reversing the file would move sides), is biased,
    or ignores side_seed."""
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(400)]
    path, reverse = write(tmp_path / "a.jsonl", rows), write(tmp_path / "b.jsonl", rows[::-1])
    first = read_battles(path, verbose=False)
    pd.testing.assert_frame_equal(first, read_battles(path, verbose=False))  # a second read: the same frame
    flipped = read_battles(reverse, verbose=False).iloc[::-1].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, flipped)  # row order changes neither ids nor sides
    share_a = (first["label"] == 0).mean()
    assert 0.42 < share_a < 0.58
    seeded = read_battles(path, side_seed=1, verbose=False)
    assert seeded["id"].tolist() == first["id"].tolist()
    moved = (seeded["label"] != first["label"]).mean()
    assert 0.35 < moved < 0.65  # an independent coin per seed
    assert chosen_and_rejected(seeded) == chosen_and_rejected(first)  # the texts follow the label


def test_id_column_is_used_and_decides_the_side(tmp_path):
    """With an id column the ids are kept (ints as text) and the side is the coin of (seed, id), whatever the
    content. Breaks if content ids replace given ones or the coin hashes the texts."""
    rows = [{"id": 100 + i, "prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(30)]
    frame = read_battles(write(tmp_path / "ids.jsonl", rows), side_seed=7, verbose=False)
    assert frame["id"].tolist() == [str(100 + i) for i in range(30)]
    assert frame["label"].tolist() == [chosen_side(str(100 + i), 7) for i in range(30)]
    assert not frame.attrs["report"].derived_ids


def test_duplicate_rows_get_unique_ids_and_are_dropped_whatever_their_side(tmp_path):
    """Exact duplicate rows: the k-th copy (file order) gets "-k"; for training they are dropped even when the
    coin put their copies on different sides. Breaks if ids collide, depend on order, or the dedupe key
    keeps the A/B orientation."""
    row, other = {"prompt": "p", "chosen": "yes", "rejected": "no"}, {"prompt": "q", "chosen": "a", "rejected": "b"}
    path = write(tmp_path / "dup.csv", [row, other, row, row, row, row, row])
    test = read_battles(path, labels=False, verbose=False)
    base = content_id(["p"], ["yes"], ["no"])
    assert test["id"].tolist() == [base, content_id(["q"], ["a"], ["b"]), *(f"{base}-{k}" for k in range(2, 7))]
    sides = read_battles(path, labels=None, drop_duplicates=False, verbose=False)["label"]
    assert sides.iloc[[0, 2, 3, 4, 5, 6]].nunique() == 2  # the copies landed on both sides
    train = read_battles(path, verbose=False)
    assert train["id"].tolist() == [base, content_id(["q"], ["a"], ["b"])]
    assert train.attrs["report"].duplicates_dropped == 5


def test_prepared_parquet_reads_back(tmp_path):
    """What save_battles writes (list cells, an int label column) reads back unchanged through read_battles.
    Breaks if list cells are stringified, the label column is not recognised, or ids change type."""
    frame = battle_frame(30)
    frame.loc[3, ["prompt", "response_a", "response_b"]] = pd.Series(
        {"prompt": ["first", "second"], "response_a": ["a1", ""], "response_b": ["b1", "b2"]})
    parsed = read_battles(raw_csv(frame, tmp_path / "t.csv"), verbose=False)
    save_battles(tmp_path / "train.parquet", parsed)
    back = read_battles(tmp_path / "train.parquet", labels=True, verbose=False)
    pd.testing.assert_frame_equal(back, parsed)
    assert back.loc[3, "prompt"] == ["first", "second"] and back.attrs["report"].layout == "kaggle"
    save_battles(tmp_path / "test.parquet", parsed.drop(columns="label"))
    assert "label" not in read_battles(tmp_path / "test.parquet", labels=None, verbose=False)


def test_kaggle_layout_in_jsonl_and_parquet(tmp_path):
    """Kaggle rows as JSONL / parquet: real lists or JSON-encoded strings, int ids and int winner columns."""
    rows = [{"id": 1, "model_a": "x", "prompt": ["hi", "more"], "response_a": ["a", None], "response_b": '["b", "c"]',
             "winner_model_a": 1, "winner_model_b": 0, "winner_tie": 0},
            {"id": 2, "model_a": "y", "prompt": '["q"]', "response_a": ["x"], "response_b": "plain text",
             "winner_model_a": 0, "winner_model_b": 0, "winner_tie": 1}]
    # parquet columns cannot mix lists and strings: prompt and response_a as lists, response_b as strings
    as_lists = [dict(r, prompt=["hi", "more"] if r["id"] == 1 else ["q"]) for r in rows]
    for path in (write(tmp_path / "k.jsonl", rows), write(tmp_path / "k.parquet", as_lists)):
        frame = read_battles(path, verbose=False)
        assert frame["id"].tolist() == ["1", "2"]
        assert frame["prompt"].tolist() == [["hi", "more"], ["q"]]
        assert frame["response_a"].tolist() == [["a", ""], ["x"]]
        assert frame["response_b"].tolist() == [["b", "c"], ["plain text"]]
        assert frame["label"].tolist() == [0, 2]
        assert frame.attrs["report"].raw_cells["response_b"] == 1


# ------------------------------------------------------------------------------- malformed input

def _bad_rows(tmp_path):
    ok = {"chosen": hh("q", "a1"), "rejected": hh("q", "a2")}
    pcr = {"prompt": "q", "chosen": "yes", "rejected": "no"}
    return [
        # (file, records or bytes, expected message after "{path}: ")
        ("cols.csv", [{"prompt": "q", "chosen": "x", "score": 1}],
         "missing required column(s) rejected for the prompt/chosen/rejected layout (found: prompt, chosen, score); "
         "layouts tried: kaggle (id, prompt, response_a, response_b), "
         "prompt/chosen/rejected (prompt, chosen, rejected), "
         "chosen/rejected (chosen, rejected)"),
        ("nostruct.jsonl", [ok, {"chosen": "just some text", "rejected": hh("q", "a2")}],
         "line 2: chosen is not a dialogue: no \\n\\nHuman: / \\n\\nAssistant: turns"),
        ("noanswer.jsonl",  # blank lines count
         "\n\n".join(json.dumps(r) for r in (ok, {"chosen": hh("q", "a1"), "rejected": hh("q", "a", "and?")})).encode(),
         "line 3: rejected does not end in an assistant turn"),
        ("prefix.jsonl", [{"chosen": hh("q", "a", "q2", "b1"), "rejected": hh("q", "other", "q2", "b2")}],
         "line 1: chosen and rejected differ in assistant turn 1 of 2; they must share every turn but the last answer"),
        ("prefix_user.jsonl", [ok, {"chosen": hh("q", "a1"), "rejected": hh("another q", "a2")}],
         "line 2: chosen and rejected differ in user turn 1; they must share every turn but the last answer"),
        ("role.parquet", [{"prompt": msgs(role, "q"), "chosen": msgs("assistant", "a"),
                           "rejected": msgs("assistant", "b")} for role in ("user", "human")],
         "row 2: prompt: message 1 has role 'human'; expected one of system, user, assistant"),
        ("content.jsonl", [{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 42}],
                            "rejected": msgs("user", "q", "assistant", "b")}],
         "line 1: chosen: message 2 (assistant) has a non-string content (int)"),
        ("alternate.jsonl", [{"chosen": msgs("user", "q", "user", "q again", "assistant", "a"),
                              "rejected": msgs("user", "q", "assistant", "b")}],
         "line 1: chosen: message 2 is 'user' where 'assistant' was expected (turns alternate user, assistant)"),
        ("system.jsonl", [{"chosen": msgs("user", "q", "system", "late", "assistant", "a"),
                           "rejected": msgs("user", "q", "assistant", "b")}],
         "line 1: chosen: message 2 is a system message after the first user turn"),
        ("repeat.jsonl", [{"prompt": "q", "chosen": msgs("user", "other q", "assistant", "a"), "rejected": "b"}],
         "line 1: chosen starts with a user message but does not repeat the prompt's messages"),
        ("same.csv", [pcr, pcr, dict(pcr, rejected="yes")], "line 4: chosen and rejected are identical"),
        ("same.parquet", [dict(pcr, id="a"), dict(pcr, id="b", rejected="yes")],
         "row 2 (id b): chosen and rejected are identical"),
        ("ids.jsonl", [dict(pcr, id="a"), dict(pcr, id="b"), dict(pcr, id="a")], "column id has duplicate values: a"),
        ("emptyid.jsonl", [dict(pcr, id="a"), dict(pcr, id=" ")], "column id is empty on line(s) 2"),
        ("null.jsonl", [pcr, {"prompt": "q", "rejected": "no"}], "line 2: chosen is missing (null)"),
        ("empty.jsonl", b"", "file is empty"),
        ("blank.jsonl", b"\n  \n", "file is empty (no JSON objects)"),
        ("empty.parquet", b"", "file is empty"),
        ("json.jsonl", (json.dumps(pcr) + "\n\n" + '{"prompt": "q", "chosen": "a",\n').encode(),
         "line 3: invalid JSON (Expecting property name enclosed in double quotes at column 31)"),
        ("array.jsonl", (json.dumps(pcr) + "\n[1, 2]\n").encode(), "line 2: expected a JSON object, found an array"),
        ("garbage.parquet", b"this is not a parquet file at all",  # then pyarrow's reason, which varies by version
         "unreadable parquet file: *"),
        ("data.json", b"[]", "unknown file type '.json'; expected one of .csv, .jsonl, .parquet"),
    ]


@pytest.mark.parametrize("case", range(22))
def test_malformed_input_is_one_line_naming_file_row_problem(tmp_path, case):
    """Each message is exactly "<file>: <row>: <problem>". Breaks if a check is missing (no error or a library
    error instead of DataError), a row is misnamed (off-by-one lines, blank lines or the header not counted),
    or the message loses the file."""
    cases = _bad_rows(tmp_path)
    assert len(cases) == 22
    name, content, message = cases[case]
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write(path, content)
    with pytest.raises(DataError) as err:
        read_battles(path, verbose=False)
    if message.endswith("*"):
        assert str(err.value).startswith(f"{path}: {message[:-1]}") and "magic bytes" in str(err.value)
    else:
        assert str(err.value) == f"{path}: {message}"
    assert "\n" not in str(err.value)


def test_csv_rows_are_named_by_their_line_even_after_multi_line_cells(tmp_path):
    """A quoted cell spanning lines moves the next record's line. Breaks if lines are counted as row index + 2."""
    path = tmp_path / "multi.csv"
    pd.DataFrame([{"prompt": "a\nlong\nquestion", "chosen": "x", "rejected": "y"},
                  {"prompt": "q", "chosen": "same", "rejected": "same"}]).to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        read_battles(path, verbose=False)
    assert str(err.value) == f"{path}: line 5: chosen and rejected are identical"


# ------------------------------------------------------------------------- prepare: binary data

def _prepare(tmp_path, train, test):
    (tmp_path / "params.yaml").write_text(f"data:\n  train: {train}\n  test: {test}\n  side_seed: 0\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("DVC_STAGE", None)
    return subprocess.run([sys.executable, str(ROOT / "stages" / "prepare.py"), "out"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)


def _pref_file(path, n=60):
    return write(path, [{"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(n)])


def test_prepare_binary_training_data(tmp_path):
    """No ties in training: one note line, the counts and has_ties in summary.json, test labels dropped.
    Breaks if the note is missing or repeated, the counts lose the empty tie class, or test.parquet keeps labels."""
    train, test = _pref_file(tmp_path / "train.jsonl"), _pref_file(tmp_path / "test.parquet", 10)
    proc = _prepare(tmp_path, train, test)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "no ties" in line]
    assert len(notes) == 1 and notes[0].startswith(f"note: the training data {train} has no ties (A wins ")
    assert "P(tie) only at a small floor" in notes[0]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    counts = read_battles(train, verbose=False)["label"].value_counts()
    assert summary["class_counts"] == {"A wins": int(counts[0]), "B wins": int(counts[1]), "tie": 0}
    assert summary["label_counts"] == [int(counts[0]), int(counts[1]), 0]
    assert summary["has_ties"] is False and summary["train_layout"] == PCR
    assert "label" not in pd.read_parquet(tmp_path / "out" / "test.parquet")


def test_prepare_accepts_test_ties_against_binary_training_and_says_what_they_cost(tmp_path):
    """A labelled Kaggle test file with tie rows against preference (no-tie) training data: accepted, its labels
    dropped, one note naming the tie count, the P(tie) floor and the log loss each tie row scored costs. Breaks if
    prepare refuses the file, keeps its labels, or says nothing about the ties."""
    train = _pref_file(tmp_path / "train.csv")
    test = raw_csv(battle_frame(12), tmp_path / "test.csv")  # a Kaggle file with tie rows
    ties = int((battle_frame(12)["label"] == 2).sum())
    assert ties > 0
    proc = _prepare(tmp_path, train, test)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1, proc.stderr
    labels = read_battles(train, verbose=False)["label"]
    floor = 1 / (len(labels) + 3)
    assert notes[0].startswith(f"note: the training data {train} has no ties ({format_counts(class_counts(labels))})")
    assert f"; the test file {test} holds {ties} tie rows (A wins " in notes[0]
    cost = -math.log(floor)  # the log loss of a tie row predicted at the floor
    assert notes[0].endswith(f"gets P(tie) of about {floor:.1g} and costs about {cost:.1f} nats of log loss")
    written = pd.read_parquet(tmp_path / "out" / "test.parquet")
    assert len(written) == 12 and "label" not in written
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["has_ties"] is False


@pytest.mark.parametrize("which", ["train", "test"])
def test_prepare_bad_file_exits_2_and_writes_nothing(tmp_path, which):
    """A malformed train or test file: exit 2, the one-line error, no traceback, no output folder."""
    bad = write(tmp_path / "bad.jsonl", [{"chosen": hh("q", "a"), "rejected": hh("q", "b")},
                                         {"chosen": hh("q", "a"), "rejected": "not a dialogue"}])
    good = _pref_file(tmp_path / "good.jsonl")
    proc = _prepare(tmp_path, bad if which == "train" else good, bad if which == "test" else good)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    message = f"error: {bad}: line 2: rejected is not a dialogue: no \\n\\nHuman: / \\n\\nAssistant: turns\n"
    assert message in proc.stderr
    assert not (tmp_path / "out").exists()


def test_single_class_preference_file_refused_for_training(tmp_path):
    """A file whose every chosen answer landed on one side (here: one row) cannot train; as a test file it is fine."""
    path = _pref_file(tmp_path / "one.jsonl", 1)
    on_a = chosen_side(read_battles(path, verbose=False)["id"][0], 0) == 0
    side = "A wins 1, B wins 0" if on_a else "A wins 0, B wins 1"
    with pytest.raises(DataError) as err:
        read_battles(path, labels=True, verbose=False)
    assert str(err.value) == (f"{path}: the labels hold a single class ({side}, tie 0); "
                              f"training needs at least two of A wins / B wins / tie")
    assert len(read_battles(path, labels=False, verbose=False)) == 1
    assert np.isin(read_battles(path, verbose=False)["label"], [0, 1]).all()


def test_prepare_refuses_a_preference_test_file_in_another_layout(tmp_path):
    """Kaggle training rows with a prompt/chosen/rejected test file: one line, exit 2, nothing written; the
    kaggle layout is accepted as test pairs after preference training. Breaks if the layouts are not compared."""
    kaggle = raw_csv(battle_frame(30), tmp_path / "train.csv")
    pref = _pref_file(tmp_path / "test.jsonl", 10)
    proc = _prepare(tmp_path, kaggle, pref)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and error[0].startswith(f"error: {pref}: layout 'prompt/chosen/rejected', but the training")
    assert not (tmp_path / "out").exists()
    unlabelled = raw_csv(battle_frame(12), tmp_path / "pairs.csv", labels=False)
    proc = _prepare(tmp_path, _pref_file(tmp_path / "train.jsonl"), unlabelled)
    assert proc.returncode == 0, proc.stderr
