"""ensemble.Judge on small finished runs (test_submit's LightGBM run, conftest's LLM run): the same
probabilities as submit, fold models loaded once, quiet, and the same refusals of stale or unfinished runs."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import test_submit
from conftest import battle_frame, finished_llm_run
from test_submit import LGBM, TARGETS, params_for

from ensemble import Judge
from ensemble.blend.run import run as run_blend
from ensemble.core.cli import fail_cleanly
from ensemble.core.data import DataError
from ensemble.judge import main
from ensemble.pipeline.submit import make_submission, read_blender

# test_submit's small finished LightGBM run (3 folds, 120 training battles) and its pinned code digest
fixed_code_digest, finished, art = test_submit.fixed_code_digest, test_submit.finished, test_submit.art


def _blend(art, params):
    run_blend(params, art, metrics_path=art / "head.json")
    return params


@pytest.mark.parametrize("method", ["weights", "stack"])
def test_predict_frame_equals_submit(art, method):
    """Breaks if the Judge skips the blender, averages the folds otherwise than submit, or reorders rows."""
    art, _, test = art
    params = _blend(art, params_for(["lgbm"], method=method))
    judge = Judge.load(art, params)
    got = judge.predict_frame(test)
    want = make_submission(test, art, params=params)
    assert list(got.columns) == ["id", *TARGETS] and list(got["id"]) == list(test["id"])
    np.testing.assert_allclose(got[TARGETS].to_numpy(), want[TARGETS].to_numpy(), rtol=0, atol=1e-9)
    shuffled = test.iloc[::-1].reset_index(drop=True)  # input order, whatever it is
    np.testing.assert_allclose(judge.predict_frame(shuffled)[TARGETS].to_numpy(), want[TARGETS].to_numpy()[::-1],
                               rtol=0, atol=1e-9)
    one = judge.predict(*(test.loc[4, c] for c in ("prompt", "response_a", "response_b")))
    np.testing.assert_allclose([one[t] for t in TARGETS], want.loc[4, TARGETS].to_numpy(float), rtol=0, atol=1e-9)
    assert "id" not in judge.predict_frame(test.drop(columns="id")).columns


def test_plain_strings_equal_one_turn_lists(art):
    """Breaks if a plain string is read as a sequence of characters (or any other layout than one turn)."""
    art, _, test = art
    judge = Judge.load(art, _blend(art, params_for(["lgbm"])))
    listed = judge.predict(["question 3 about topic"], ["word word word"], ["text " * 20])
    plain = judge.predict("question 3 about topic", "word word word", "text " * 20)
    assert plain == listed
    assert plain != judge.predict(list("question 3 about topic"), list("word word word"), list("text " * 20))
    flat = test.assign(**{c: ["\n".join(t) for t in test[c]] for c in ("prompt", "response_a", "response_b")})
    pd.testing.assert_frame_equal(judge.predict_frame(flat), judge.predict_frame(test))
    two_turns = judge.predict(["q one", "q two"], ["word", "word word"], ["text", ""])
    assert abs(sum(two_turns.values()) - 1) < 1e-9


def test_lgbm_fold_models_load_once_and_judge_is_quiet(art, capsys, monkeypatch):
    """Breaks if predict loads the folds again (e.g. calls submit's predict_model per battle), or if the
    progress lines of submit show without verbose=True."""
    from ensemble.models.lgbm.model import LGBMModel

    art, _, test = art
    params = _blend(art, params_for(["lgbm"]))
    loaded = []
    real_load = LGBMModel.load.__func__
    monkeypatch.setattr(LGBMModel, "load", classmethod(lambda cls, path, **kw: loaded.append(path) or
                                                         real_load(cls, path, **kw)))
    capsys.readouterr()
    judge = Judge.load(art, params)
    for k in range(3):
        judge.predict(f"question {k}", "word " * k, "text")
    judge.predict_frame(test)
    assert sorted(p.name for p in loaded) == ["fold_0", "fold_1", "fold_2"]
    assert capsys.readouterr() == ("", "")
    Judge.load(art, params, verbose=True).predict("q", "a", "b")
    assert "[lgbm] predicting with" in capsys.readouterr().err


@pytest.fixture(scope="module")
def llm_run(tmp_path_factory, tiny_llm, one_torch_thread):
    run = finished_llm_run(tmp_path_factory.mktemp("judge_llm"), tiny_llm, battle_frame(36, seed=4), 30, 3)
    params = {"llm": run["config"], "blend": {"models": ["llm"], "method": "stack", "bootstrap": 20}}
    with pytest.MonkeyPatch.context() as mp:  # the folds' code part: the pinned one
        mp.setattr("ensemble.core.fingerprint.code_digest", lambda modules: "code-pinned")
        run_blend(params, run["art"], metrics_path=run["art"] / "head.json")
        assert read_blender(run["art"]).used_models() == ["llm"]  # stack: whatever its fit, it reads the LLM
        yield run["art"], params, run["test"]


@pytest.mark.parametrize("merged", [False, True])
def test_llm_folds_load_once_merged_or_not_and_match_submit(llm_run, merged, capsys, monkeypatch):
    """Breaks if llm.merge_folds is ignored (three networks instead of one, other probabilities), if a fold
    model or its network is built again per call, or if the Judge's LLM path differs from submit's."""
    from ensemble.models.llm import merge
    from ensemble.models.llm.model import LLMModel

    art, params, test = llm_run
    params = {**params, "llm": {**params["llm"], "merge_folds": merged}}
    counts = {"load": 0, "merge": 0, "network": 0}
    real_load, real_merge, real_build = LLMModel.load.__func__, merge.merge_folds, LLMModel._build_replica

    def count(key, func):
        def counted(*args, **kwargs):
            counts[key] += 1
            return func(*args, **kwargs)
        return counted

    monkeypatch.setattr(LLMModel, "load", classmethod(count("load", real_load)))
    monkeypatch.setattr(merge, "merge_folds", count("merge", real_merge))
    monkeypatch.setattr(LLMModel, "_build_replica", count("network", real_build))
    capsys.readouterr()
    judge = Judge.load(art, params)
    assert counts == {"load": 3, "merge": int(merged), "network": 1 if merged else 3}  # the warm-up built them
    got = judge.predict_frame(test)
    judge.predict("a question", "an answer", "another answer")
    assert counts == {"load": 3, "merge": int(merged), "network": 1 if merged else 3}
    assert capsys.readouterr().err == ""
    want = make_submission(test, art, params=params)
    np.testing.assert_allclose(got[TARGETS].to_numpy(), want[TARGETS].to_numpy(), rtol=0, atol=1e-9)
    other = make_submission(test, art, params={**params, "llm": {**params["llm"], "merge_folds": not merged}})
    assert not np.allclose(got[TARGETS].to_numpy(), other[TARGETS].to_numpy(), rtol=0, atol=1e-9)


def _refused(art, params, message, **kwargs):
    with pytest.raises(DataError) as err:
        Judge.load(art, params, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_stale_unfinished_or_foreign_runs_are_refused(art, tmp_path, fixed_code_digest):
    """Breaks if the Judge skips submit's fold checks (fold_dirs) or judges with a model from elsewhere."""
    art, _, test = art
    params = _blend(art, params_for(["lgbm"]))
    _refused(art, {**params, "lgbm": {**LGBM, "n_estimators": 16}},
             "fold_0: no longer matches its fingerprint: params lgbm.n_estimators changed")
    fixed_code_digest.setattr("ensemble.core.fingerprint.code_digest", lambda modules: "code-v2")
    _refused(art, params, "fold_0: no longer matches its fingerprint: the code the model declares changed")
    assert Judge.load(art, params, check_code=False).predict("q", "a", "b")  # submit --skip-code-check
    fixed_code_digest.setattr("ensemble.core.fingerprint.code_digest", lambda modules: "code-v1")
    folds = art / "models" / "lgbm"
    (folds / "fold_1" / "done.json").rename(tmp_path / "done.json")
    _refused(art, params, "fold_1 missing or unfinished for the 3 folds")
    (tmp_path / "done.json").rename(folds / "fold_1" / "done.json")
    _blend(art, params_for(["lgbm", "gemma"], method="stack"))
    _refused(art, params, "blends model(s) from elsewhere (gemma)")


def test_empty_and_identical_answers(art):
    """Breaks if the Judge hands the blender a frame without the answers (no degenerate-battle rule) or
    fails on an empty answer."""
    art, _, test = art
    params = _blend(art, params_for(["lgbm"], degenerate={"mode": "on"}))
    judge = Judge.load(art, params)
    rule = read_blender(art).degenerate_
    battles = pd.DataFrame({"id": ["same", "a_empty", "b_empty", "both_empty", "no_turns"],
                            "prompt": ["q"] * 5,
                            "response_a": ["same answer", "", "an answer", "", []],
                            "response_b": ["same answer", "an answer", "  ", "", ["x"]]})
    got = judge.predict_frame(battles)
    p = got[TARGETS].to_numpy()
    assert np.isfinite(p).all() and (p >= 0).all() and np.allclose(p.sum(axis=1), 1)
    np.testing.assert_allclose(p[0], np.asarray(rule.identical) / sum(rule.identical), atol=1e-9)
    np.testing.assert_allclose(p[2], np.asarray(rule.one_empty) / sum(rule.one_empty), atol=1e-9)
    np.testing.assert_allclose(p[1], p[2][[1, 0, 2]], atol=1e-9)
    one = judge.predict("q", "same answer", "same answer")
    np.testing.assert_allclose([one[t] for t in TARGETS], p[0], atol=1e-12)
    want = make_submission(battles.assign(**{c: [[v] if isinstance(v, str) else v for v in battles[c]]
                                             for c in ("prompt", "response_a", "response_b")}), art, params=params)
    np.testing.assert_allclose(p, want[TARGETS].to_numpy(), atol=1e-9)


def test_bad_input_is_one_line(art, tmp_path, capsys):
    """Breaks if a bad cell or a missing column reaches the models (a traceback), or the CLI prints one."""
    art, _, _ = art
    params = _blend(art, params_for(["lgbm"]))
    judge = Judge.load(art, params)
    with pytest.raises(DataError, match="response_a: dict .*expected a string or a list of strings"):
        judge.predict("q", {"text": "a"}, "b")
    with pytest.raises(DataError, match="missing column.s. response_b"):
        judge.predict_frame(pd.DataFrame({"prompt": ["q"], "response_a": ["a"]}))
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    args = ["--params", str(tmp_path / "params.yaml"), "--prompt", "q", "--a", "an answer", "--b", "another"]
    capsys.readouterr()
    assert main(["--artifacts", str(art), *args]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(out) == sorted(TARGETS) and abs(sum(out.values()) - 1) < 1e-9
    shutil.rmtree(art / "models" / "lgbm" / "fold_2")
    assert fail_cleanly(lambda: main(["--artifacts", str(art), *args])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "fold_2" in err and "\n" not in err, err


def test_no_model_code_digest_follows_the_judge():
    """`from ensemble import Judge` must not make the Judge (and through it submit, the blenders) part of every
    model's code: the fingerprint follows every import statement of ensemble/__init__.py. Breaks if __getattr__
    imports ensemble.judge with an import statement."""
    from ensemble.core.fingerprint import import_closure
    from ensemble.models import REGISTRY

    for name, target in REGISTRY.items():
        files = {p.name for p in import_closure([target.split(":")[0]])}
        assert "__init__.py" in files and not files & {"judge.py", "submit.py"}, name
