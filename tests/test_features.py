"""Numeric features: swap antisymmetry, robustness and correct counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ensemble.core.data import as_turns, read_battles, swap_ab
from ensemble.core.features import FEATURE_VERSION, SIDE_FEATURES, feature_names, numeric_features

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

MARKDOWN = (
    "# Title\n## Section\nnot # a header\n"
    "- one\n  * two\n+ three\n-not a bullet\n"
    "1. first\n  12. second\n3.not numbered\n"
    "**bold** and **more bold** but ** not\n"
    "```python\nprint('x')\n```\n"
    "| a | b |\n|---|---|\n| 1 | 2 |\n"
    "see https://example.com and www.example.org"
)


def _frame() -> pd.DataFrame:
    rows = [
        (["How do I sort a list?"], ["Use sorted(items)."], [MARKDOWN]),
        (["Tell me a joke", "Another one!"], ["I'm sorry, but I can't help with that.", "I can\u2019t do that."],
         ["Why did the chicken cross the road?", "To get to the other side!"]),
        ([""], [""], ["ok"]),
        ([], [], []),
        (["x"], [None, "still here"], ["\ud83d lone surrogate"]),
        (["Emoji?"], ["Sure \U0001F600\U0001F680 \u2728"], ["你好，世界。这是中文回答。"]),
        (["Long"], ["word " * 20000], ["Привет! Как дела? " * 10]),
        (["Multi", "turn", "prompt"], ["a", "bb", "cccc"], ["As an AI language model, I am unable to help.", "", "x"]),
    ]
    return pd.DataFrame({
        "id": [str(i) for i in range(len(rows))],
        "prompt": [r[0] for r in rows],
        "response_a": [r[1] for r in rows],
        "response_b": [r[2] for r in rows],
        "label": [0, 1, 2, 2, 0, 1, 0, 1],
    })


@pytest.fixture(scope="module")
def frame():
    return _frame()


@pytest.fixture(scope="module")
def feats(frame):
    return numeric_features(frame)


def _real():
    path = SHARED / "lmsys_train_first100.csv"
    if not path.exists():
        pytest.skip(f"{path} not available")
    return read_battles(path, verbose=False)


def test_columns(feats, frame):
    names = feature_names()
    assert list(feats.columns) == names
    assert len(set(names)) == len(names)
    assert len(names) >= 28
    assert (feats.dtypes == np.float32).all()
    assert len(feats) == len(frame)
    assert isinstance(feats.index, pd.RangeIndex) and feats.index.start == 0
    assert isinstance(FEATURE_VERSION, int)


def test_edge_cases_finite(feats):
    assert np.isfinite(feats.to_numpy()).all()
    assert (feats.filter(like="_ratio").filter(regex="^[ab]_").to_numpy() <= 1.0).all()


def _check_swap(frame: pd.DataFrame) -> None:
    orig = numeric_features(frame)
    swapped = numeric_features(swap_ab(frame))
    for name in SIDE_FEATURES:
        np.testing.assert_array_equal(swapped[f"a_{name}"], orig[f"b_{name}"])
        np.testing.assert_array_equal(swapped[f"b_{name}"], orig[f"a_{name}"])
        np.testing.assert_array_equal(swapped[f"diff_{name}"], -orig[f"diff_{name}"])
        np.testing.assert_allclose(swapped[f"ratio_{name}"] * orig[f"ratio_{name}"], 1.0, rtol=1e-6)
    pairs = (("a_minus_p_chars", "b_minus_p_chars"), ("a_over_p_chars", "b_over_p_chars"),
             ("a_over_p_words", "b_over_p_words"), ("a_prompt_overlap", "b_prompt_overlap"),
             ("a_prompt_cover", "b_prompt_cover"))
    for left, right in pairs:
        np.testing.assert_array_equal(swapped[left], orig[right])
        np.testing.assert_array_equal(swapped[right], orig[left])
    for name in ("ab_jaccard", "ab_same"):  # about both answers at once: the same either way round
        np.testing.assert_array_equal(swapped[name], orig[name])
    prompt_cols = [c for c in orig.columns if c.startswith("p_")]
    pd.testing.assert_frame_equal(swapped[prompt_cols], orig[prompt_cols])
    # Every column is covered by one of the rules above.
    covered = {f"{p}_{n}" for p in ("a", "b", "diff", "ratio") for n in SIDE_FEATURES}
    covered |= set(prompt_cols) | {c for pair in pairs for c in pair} | {"ab_jaccard", "ab_same"}
    assert covered == set(orig.columns)


def test_swap_symmetry(frame):
    _check_swap(frame)


def test_swap_symmetry_real():
    _check_swap(_real())


def test_counts(feats, frame):
    row = feats.iloc[0]
    assert row["b_headers"] == 2
    assert row["b_bullets"] == 3
    assert row["b_numbered"] == 2
    assert row["b_bold"] == 2
    assert row["b_code_fences"] == 2
    assert row["b_table_rows"] == 3
    assert row["b_urls"] == 2
    assert row["b_lines"] == MARKDOWN.count("\n") + 1
    assert row["b_chars"] == len(MARKDOWN)
    assert row["b_words"] == len(MARKDOWN.split())
    assert row["a_chars"] == len("Use sorted(items).")
    assert row["diff_chars"] == row["a_chars"] - row["b_chars"]
    assert row["ratio_chars"] == pytest.approx((row["a_chars"] + 1) / (row["b_chars"] + 1), rel=1e-6)
    assert row["a_minus_p_chars"] == row["a_chars"] - row["p_chars"]
    assert feats.loc[0, "a_refusals"] == 0
    assert feats.loc[1, "a_refusals"] >= 2  # both apostrophe styles count
    assert feats.loc[7, "b_refusals"] >= 2
    assert feats.loc[1, "b_exclaims"] == 1 and feats.loc[1, "b_questions"] == 1
    assert feats.loc[2, "a_empty"] == 1 and feats.loc[3, "a_empty"] == 1 and feats.loc[0, "a_empty"] == 0
    assert feats.loc[5, "b_nonascii_ratio"] == 1.0
    assert 0 < feats.loc[5, "a_nonascii_ratio"] < 1
    assert feats.loc[6, "a_unique_ratio"] == pytest.approx(1 / 20000)
    assert feats.loc[6, "a_chars"] == 100000


def test_turn_stats(feats, frame):
    for i in range(len(frame)):
        for side in ("a", "b"):
            # one turn parser
            lengths = np.array([len(t) for t in as_turns(frame.loc[i, f"response_{side}"])], dtype=float)
            got = feats.loc[i]
            assert got[f"{side}_turns"] == len(lengths)
            if len(lengths) == 0:
                assert got[f"{side}_turn_sum"] == 0 and got[f"{side}_turn_max"] == 0
                continue
            assert got[f"{side}_turn_sum"] == pytest.approx(lengths.sum())
            assert got[f"{side}_turn_mean"] == pytest.approx(lengths.mean())
            assert got[f"{side}_turn_max"] == pytest.approx(lengths.max())
            assert got[f"{side}_turn_median"] == pytest.approx(np.median(lengths))
            assert got[f"{side}_turn_std"] == pytest.approx(lengths.std(), abs=1e-3)
    # an empty prompt list is one empty turn (data.as_turns)
    assert feats.loc[7, "p_turns"] == 3 and feats.loc[3, "p_turns"] == 1


def test_row_order_preserved(frame, feats):
    order = [5, 2, 7, 0, 1, 6, 4, 3]
    shuffled = frame.iloc[order].copy()
    shuffled.index = [100 + i for i in range(len(order))]  # non-default index must not leak through
    out = numeric_features(shuffled)
    assert isinstance(out.index, pd.RangeIndex) and out.index.start == 0
    pd.testing.assert_frame_equal(out, feats.iloc[order].reset_index(drop=True))


def test_empty_frame():
    empty = pd.DataFrame({"id": [], "prompt": [], "response_a": [], "response_b": []})
    out = numeric_features(empty)
    assert out.shape == (0, len(feature_names()))


def test_real_data_finite():
    real = _real()
    out = numeric_features(real)
    assert len(out) == len(real)
    assert np.isfinite(out.to_numpy()).all()
    # Real answers vary: the features should not be constant.
    assert out["a_chars"].std() > 0 and out["diff_chars"].abs().max() > 0
    assert out["a_turns"].max() > 1  # the file has multi-turn battles


def test_repetition_and_overlap_features_see_what_they_claim():
    """A degenerate answer (one line repeated, as PandaLM's 7B models write) scores high on every repetition
    feature and a varied one low; an answer that reuses the prompt's words overlaps it; identical answers
    are marked; a text cut mid-word looks open."""
    looped = "\n".join(["Coding languages for beginners"] * 12)
    varied = "Python is a good first language.\nJavaScript runs in every browser.\nGo compiles fast and is simple."
    frame = pd.DataFrame({"id": ["0", "1"], "prompt": [["best coding languages for beginners"]] * 2,
                          "response_a": [[looped], ["same answer"]], "response_b": [[varied], ["same answer"]]})
    f = numeric_features(frame)
    assert f.loc[0, "a_dup_lines"] > 0.9 and f.loc[0, "b_dup_lines"] == 0
    assert f.loc[0, "a_compress_ratio"] < 0.5 * f.loc[0, "b_compress_ratio"]
    assert f.loc[0, "a_trigram_repeat"] > 0.8 and f.loc[0, "b_trigram_repeat"] == 0
    assert (f.loc[0, "a_prompt_overlap"] == 1.0 and f.loc[0, "a_prompt_cover"] == 0.8
            and f.loc[0, "b_prompt_overlap"] < 0.2)
    assert f.loc[0, "ab_same"] == 0 and f.loc[1, "ab_same"] == 1 and f.loc[1, "ab_jaccard"] == 1
    assert f.loc[0, "a_ends_open"] == 1 and f.loc[0, "b_ends_open"] == 0  # "beginners" vs "simple."
