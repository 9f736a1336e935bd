"""What a finished fold's fingerprint holds, part by part: a training text, a test text, a learned
key, a file the model imports and the pretrained weights each invalidate what depends on them; the
run-time keys (devices, inference budgets) and files no model imports invalidate nothing. Every
check here comes with the broken code it catches, most with a negative control in the test itself."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import battle_frame, finished_llm_run

from ensemble.core import fingerprint as fp
from ensemble.core.data import TEXT_COLUMNS, DataError
from ensemble.core.fingerprint import read_done
from ensemble.core.folds import attach_folds, make_folds, prompt_groups, prompt_key
from ensemble.pipeline.oof import run_oof

LGBM = {"n_estimators": 15, "early_stopping_rounds": 0, "n_jobs": 1, "min_child_samples": 5,
        "vectorizer": {"max_features": 50, "min_df": 1}}
PROBA = ["winner_model_a", "winner_model_b", "winner_tie"]


@pytest.fixture
def pinned_code(monkeypatch):
    """The code part pinned: the library is edited by others while the suite runs, and such an edit
    between two runs of one test is not what these tests are about (test_code_digest_* is)."""
    monkeypatch.setattr(fp, "code_digest", lambda modules: "code-pinned")


def texts_blind_frame_digest(frame: pd.DataFrame) -> str:
    """The broken digest the negative controls plant: ids and labels only, no texts."""
    labels = frame["label"].to_numpy().tobytes() if "label" in frame else b""
    return hashlib.sha256("\x1e".join(frame["id"]).encode() + labels).hexdigest()


def run(capsys, name, config, train, folds, art, test=None):
    """run_oof; (its log, the OOF matrix, the test matrix or None)."""
    capsys.readouterr()
    run_oof(name, config, train, folds, art, test=test)
    log = capsys.readouterr().err
    oof = pd.read_parquet(art / "oof" / f"{name}.parquet")[PROBA].to_numpy()
    pred = pd.read_parquet(art / "test" / f"{name}.parquet")[PROBA].to_numpy() if test is not None else None
    return log, oof, pred


def reused(log: str, n: int) -> list[int]:
    return [k for k in range(n) if re.search(rf"\] fold {k}: already done, reusing", log)]


def trained(log: str, n: int) -> list[int]:
    return [k for k in range(n) if re.search(rf"\] fold {k}: training on \d+ rows", log)]


def lgbm_data() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    train = battle_frame(99, seed=5)
    test = battle_frame(12, seed=6).drop(columns="label").assign(id=lambda f: "t" + f["id"])
    return train, test, make_folds(train, 3, seed=0)


def edit_text(frame: pd.DataFrame, row: int) -> pd.DataFrame:
    """One text edited, same ids and labels: response A made the shorter one if it was the longer one
    and far longer if not (the length is what the model learns, so its prediction must move)."""
    edited = frame.copy()
    a, b = edited.at[row, "response_a"][0], edited.at[row, "response_b"][0]
    edited.at[row, "response_a"] = ["word"] if len(a) > len(b) else [a + " and a much longer ending" * 30]
    return edited


# ----------------------------------------------------------------------------- the data part

def test_frame_digest_sees_every_text_of_every_turn():
    frame = battle_frame(6).assign(prompt=[["first turn", "second turn"]] * 6)
    base = fp.frame_digest(frame)
    assert fp.frame_digest(frame.copy()) == base
    for col in TEXT_COLUMNS:
        for turn in (0, -1):
            edited = frame.copy()
            turns = list(edited.at[2, col])
            turns[turn] = turns[turn] + "!"
            edited.at[2, col] = turns
            assert fp.frame_digest(edited) != base, (col, turn)
    assert fp.frame_digest(frame.assign(label=(frame["label"] + 1) % 3)) != base
    assert fp.frame_digest(frame.assign(id=frame["id"] + "x")) != base
    # turn boundaries count: ["ab"] and ["a", "b"] are different battles
    assert fp.frame_digest(frame.assign(prompt=[["ab"]] * 6)) != fp.frame_digest(frame.assign(prompt=[["a", "b"]] * 6))


def test_a_text_edit_retrains_the_folds_training_on_it_and_repredicts_the_fold_validating_it(
        tmp_path, capsys, pinned_code, monkeypatch):
    """A fold's data part is its training rows: an edited battle retrains the folds that train on it, while the
    fold that validates it is reused and predicts that battle again (its other predictions kept)."""
    from ensemble.models import load

    train, _, folds = lgbm_data()
    fold_of, row = attach_folds(train, folds), 7
    k = int(fold_of[row])
    others = [j for j in range(3) if j != k]
    art = tmp_path / "a"
    log, oof, _ = run(capsys, "lgbm", LGBM, train, folds, art)
    assert trained(log, 3) == [0, 1, 2]
    log, again, _ = run(capsys, "lgbm", LGBM, train, folds, art)
    assert reused(log, 3) == [0, 1, 2] and trained(log, 3) == [] and np.array_equal(again, oof)
    before = {j: read_done(art / "models" / "lgbm" / f"fold_{j}")["parts"] for j in range(3)}

    edited = edit_text(train, row)
    log, changed, _ = run(capsys, "lgbm", LGBM, edited, folds, art)
    assert reused(log, 3) == [k] and trained(log, 3) == others, log
    after = {j: read_done(art / "models" / "lgbm" / f"fold_{j}")["parts"] for j in range(3)}
    assert after[k] == before[k]
    assert all([p for p in before[j] if before[j][p] != after[j][p]] == ["data"] for j in others)
    fold_model = load(art / "models" / "lgbm" / f"fold_{k}")
    np.testing.assert_allclose(changed[row], fold_model.predict_proba(edited.iloc[[row]])[0], atol=1e-12)
    assert not np.allclose(changed[row], oof[row])
    kept = (fold_of == k) & (np.arange(len(train)) != row)
    assert np.array_equal(changed[kept], oof[kept])

    # negative control: digests blind to the texts would keep every stale fold and prediction
    monkeypatch.setattr(fp, "text_digests", lambda frame: [""] * len(frame))
    run(capsys, "lgbm", LGBM, train, folds, tmp_path / "blind")
    log, stale, _ = run(capsys, "lgbm", LGBM, edited, folds, tmp_path / "blind")
    assert reused(log, 3) == [0, 1, 2] and np.array_equal(stale, oof)


def test_a_fold_that_chooses_on_its_valid_rows_holds_them_in_its_data_part():
    """LightGBM's early stopping on the fold's valid rows (early_stopping: valid) makes them part of what the
    fold learned from: an edit of one of them changes that fold's identity, which the default does not."""
    from ensemble.models import create

    train, _, folds = lgbm_data()
    fold_of, row = attach_folds(train, folds), 7
    k = int(fold_of[row])
    edited = edit_text(train, row)
    for early_stopping, changes in (("inner", False), ("valid", True)):
        model = create("lgbm", {**LGBM, "early_stopping_rounds": 5, "early_stopping": early_stopping})
        assert model.learns_from_valid() is changes
        before, after = fp.Identities(model, train, fold_of).of(k), fp.Identities(model, edited, fold_of).of(k)
        assert after.changed(before.parts) == (["data"] if changes else []), early_stopping


def test_a_test_text_edit_recomputes_that_test_prediction_while_the_folds_are_reused(
        tmp_path, capsys, pinned_code, monkeypatch):
    train, test, folds = lgbm_data()
    _, oof, pred = run(capsys, "lgbm", LGBM, train, folds, tmp_path / "a", test)
    edited = edit_text(test, 3)
    log, oof2, pred2 = run(capsys, "lgbm", LGBM, train, folds, tmp_path / "a", edited)
    assert reused(log, 3) == [0, 1, 2] and trained(log, 3) == []
    assert np.array_equal(oof2, oof)
    others = np.arange(len(test)) != 3
    assert not np.allclose(pred2[3], pred[3]) and np.array_equal(pred2[others], pred[others])
    # the recomputed row is what a fresh run on the edited test frame predicts
    _, _, fresh = run(capsys, "lgbm", LGBM, train, folds, tmp_path / "fresh", edited)
    np.testing.assert_allclose(pred2, fresh, atol=1e-12)

    # negative control: test predictions keyed by the test ids alone would stay stale
    monkeypatch.setattr(fp, "frame_digest", texts_blind_frame_digest)
    _, _, blind = run(capsys, "lgbm", LGBM, train, folds, tmp_path / "blind", test)
    _, _, stale = run(capsys, "lgbm", LGBM, train, folds, tmp_path / "blind", edited)
    assert np.array_equal(stale, blind)


# ----------------------------------------------------------------------------- the config part: run-time keys

@pytest.fixture(scope="module")
def llm_run(tmp_path_factory, tiny_llm, one_torch_thread):
    """A finished 2-fold LLM run (conftest.finished_llm_run) with the prepared files and folds submit checks."""
    return finished_llm_run(tmp_path_factory.mktemp("llm_fingerprint"), tiny_llm, battle_frame(30, seed=1), 24, 2)


def test_llm_trained_on_one_device_is_submitted_on_two_without_retraining(llm_run, pinned_code, monkeypatch):
    from ensemble.models import load
    from ensemble.models.llm.model import LLMModel
    from ensemble.pipeline.submit import fold_dirs, predict_model

    art, config, test = llm_run["art"], llm_run["config"], llm_run["test"]
    two = {**config, "devices": ["cpu:0", "cpu:1"]}
    assert [d.name for d in fold_dirs(art, "llm", {"llm": two})] == ["fold_0", "fold_1"]
    model = load(art / "models" / "llm" / "fold_0", runtime=two)
    sharded = model.predict_proba(test)
    assert sorted(model._replicas.models) == ["cpu:0", "cpu:1"]  # really two devices, one replica each
    single = load(art / "models" / "llm" / "fold_0", runtime=config).predict_proba(test)
    np.testing.assert_array_equal(sharded, single)
    one_dev, two_dev = predict_model(art, "llm", test, {"llm": config}), predict_model(art, "llm", test, {"llm": two})
    np.testing.assert_array_equal(two_dev, one_dev)
    np.testing.assert_allclose(one_dev, pd.read_parquet(art / "test" / "llm.parquet")[PROBA].to_numpy(), atol=1e-12)
    # negative control: were `devices` a learned key, submit would refuse these very folds
    monkeypatch.setattr(LLMModel, "runtime_keys", tuple(k for k in LLMModel.runtime_keys if k != "devices"))
    with pytest.raises(DataError, match=r"fold_0: no longer matches its fingerprint: params llm\.devices changed"):
        fold_dirs(art, "llm", {"llm": two})


def test_llm_run_time_keys_reuse_the_folds_and_a_learned_key_retrains(llm_run, pinned_code, tmp_path, capsys):
    art = tmp_path / "artifacts"
    shutil.copytree(llm_run["art"], art)  # the shared run stays as trained
    config, train, test, folds = llm_run["config"], llm_run["train"], llm_run["test"], llm_run["folds"]
    _, oof, pred = run(capsys, "llm", config, train, folds, art, test)
    for runtime in ({"devices": ["cpu:0", "cpu:1"]}, {"infer_max_rows": 3}, {"pad_to_max_len": True},
                    {"infer_max_tokens": 512, "cpu_fallback": True, "cache_max_gib": 4.0}):
        log, again, pred_again = run(capsys, "llm", {**config, **runtime}, train, folds, art, test)
        assert reused(log, 2) == [0, 1] and trained(log, 2) == [], runtime
        assert np.array_equal(again, oof) and np.array_equal(pred_again, pred)
    log, _, _ = run(capsys, "llm", {**config, "lora_r": 8}, train, folds, art)
    assert reused(log, 2) == [] and trained(log, 2) == [0, 1], log


# ----------------------------------------------------------------------------- the backbone part

def test_llm_refuses_a_fold_whose_base_weights_changed(llm_run, pinned_code, tiny_llm):
    import torch
    from transformers import LlamaForCausalLM

    from ensemble.models import load
    from ensemble.nn.hf import ModelLoadError
    from ensemble.pipeline.submit import fold_dirs

    art, base, config, test = llm_run["art"], llm_run["base"], llm_run["config"], llm_run["test"]
    fold = art / "models" / "llm" / "fold_0"
    params = {"llm": config}
    assert np.isfinite(load(fold, runtime=config).predict_proba(test)).all()  # the same fold loads before
    assert len(fold_dirs(art, "llm", params)) == 2
    try:
        net = LlamaForCausalLM.from_pretrained(base)
        with torch.no_grad():
            net.model.layers[0].mlp.down_proj.weight.mul_(1.01)
        net.save_pretrained(base)  # same config, tokenizer and file names: only the weights differ
        with pytest.raises(ModelLoadError, match=rf"fold_0: llm\.base_model {re.escape(str(base))} no longer holds "
                                                 rf"the weights this fold was trained on") as err:
            load(fold, runtime=config)
        assert "\n" not in str(err.value)
        with pytest.raises(DataError, match=r"fold_0: no longer matches its fingerprint: its pretrained weights "
                                            r"changed since it was trained") as err:
            fold_dirs(art, "llm", params)
        assert "\n" not in str(err.value)
    finally:  # the module's other tests use this folder as trained
        shutil.rmtree(base)
        shutil.copytree(tiny_llm, base)
    assert len(fold_dirs(art, "llm", params)) == 2


# ----------------------------------------------------------------------------- the code part

def _package_copy(tmp_path: Path) -> Path:
    root = tmp_path.resolve() / "copy"
    shutil.copytree(fp.PACKAGE_ROOT / "ensemble", root / "ensemble",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return root


def _touch(root: Path, rel: str) -> None:
    path = root / rel
    path.write_text(path.read_text(encoding="utf-8") + "\n# edited by test_fingerprint\n", encoding="utf-8")


def package_models() -> dict:
    """One instance of each of the package's models (not a model a test registered), LightGBM with its
    similarity features on (they bring the sentence encoder's code and libraries)."""
    from ensemble.models import REGISTRY, create

    names = [name for name, target in REGISTRY.items() if target.startswith("ensemble.")]
    assert set(names) >= {"lgbm", "dual_tower", "llm"}
    return {name: create(name, {"embeddings": "embedded:minilm"} if name == "lgbm" else {}) for name in names}


def test_each_model_declares_every_module_it_imports_that_is_not_plumbing():
    """A model's code part is the modules it declares (BaseModel.learns_with): a module it imports, at any depth,
    is declared or plumbing, so a new import forces a decision. Breaks if a declaration misses a module."""
    from ensemble.models.base import LEARNS_WITH
    from ensemble.pipeline import distill

    for name, model in package_models().items():
        declared = model.code_modules()
        assert all(fp.module_file(m) is not None for m in declared), name  # no stale or misspelt name
        assert fp.undeclared_imports(declared) == [], name
        assert not set(declared) & set(fp.PLUMBING), name
        # negative control: leaving out one module the model imports is caught
        for left_out in ("ensemble.core.targets", declared[-1]):
            assert left_out in fp.undeclared_imports([m for m in declared if m != left_out]), (name, left_out)
    assert fp.undeclared_imports((*distill.CODE, *LEARNS_WITH)) == []  # a student's teachers part
    assert fp.undeclared_imports(("ensemble.pipeline.distill", *LEARNS_WITH)) == [
        "ensemble.blend", "ensemble.blend.base", "ensemble.blend.weights", "ensemble.core.degenerate",
        "ensemble.nn.distributed"]


def test_code_digest_follows_the_declared_modules_and_nothing_else(tmp_path, monkeypatch):
    """code_digest over a copy of the package (PACKAGE_ROOT pointed at it; the real files are never edited):
    an edit of plumbing (a progress message, the GGUF converter) or of a file no model declares (the report)
    leaves every model's digest unchanged; an edit of a declared file changes the digest of exactly the models
    that declare it."""
    models = package_models()
    real = {name: fp.code_digest(m.code_modules()) for name, m in models.items()}
    root = _package_copy(tmp_path)
    monkeypatch.setattr(fp, "PACKAGE_ROOT", root)

    def digests() -> dict[str, str]:
        return {name: fp.code_digest(m.code_modules()) for name, m in models.items()}

    base = digests()
    assert base == real  # the copy hashes as the package does: the edits below are the only difference
    package = fp.folder_digest(root / "ensemble")
    for unrelated in ("ensemble/core/progress.py", "ensemble/core/io.py", "ensemble/nn/convert.py",
                      "ensemble/report/html.py", "ensemble/judge.py"):
        _touch(root, unrelated)
    assert digests() == base
    # negative control: the edits are real, and the import closure the code part used to be would see them
    assert fp.folder_digest(root / "ensemble") != package
    assert "ensemble/core/progress.py" in {f.relative_to(root).as_posix() for f in fp.import_closure(
        [type(models["lgbm"]).__module__], root)}

    edits = {"ensemble/models/lgbm/model.py": ["lgbm"], "ensemble/models/dual_tower/ranking.py": ["dual_tower"],
             "ensemble/models/llm/probe.py": ["llm"], "ensemble/nn/inference.py": ["llm"],
             "ensemble/nn/training.py": ["dual_tower", "llm"], "ensemble/nn/hf.py": sorted(models),
             "ensemble/core/features.py": ["dual_tower", "lgbm"], "ensemble/core/data.py": sorted(models)}
    before = base
    for rel, expected in edits.items():
        _touch(root, rel)
        after = digests()
        assert sorted(m for m in models if after[m] != before[m]) == expected, rel
        before = after
    # LightGBM without its similarity features declares no network code
    plain = type(models["lgbm"])({})
    assert "ensemble.nn.hf" not in plain.code_modules() and "torch" not in plain.library_names()


def test_a_plumbing_edit_reuses_the_folds_and_a_declared_one_retrains(tmp_path, capsys, monkeypatch):
    """The same, end to end through run_oof (its code digest read from a package copy): a progress message
    edited retrains nothing."""
    root = _package_copy(tmp_path)
    monkeypatch.setattr(fp, "PACKAGE_ROOT", root)
    train, _, folds = lgbm_data()
    art = tmp_path / "artifacts"
    assert trained(run(capsys, "lgbm", LGBM, train, folds, art)[0], 3) == [0, 1, 2]
    progress = root / "ensemble/core/progress.py"
    progress.write_text(progress.read_text(encoding="utf-8").replace("def log(", "def log(  ", 1), encoding="utf-8")
    _touch(root, "ensemble/nn/convert.py")
    _touch(root, "ensemble/models/llm/model.py")  # another model's file
    assert reused(run(capsys, "lgbm", LGBM, train, folds, art)[0], 3) == [0, 1, 2]
    _touch(root, "ensemble/core/features.py")  # LightGBM's length features
    log = run(capsys, "lgbm", LGBM, train, folds, art)[0]
    assert reused(log, 3) == [] and trained(log, 3) == [0, 1, 2]


# ----------------------------------------------------------------------------- the libraries part

def test_a_library_version_change_retrains_the_models_that_declare_it_only(tmp_path, capsys, monkeypatch):
    """A patched lightgbm version retrains LightGBM's folds and changes no other model's identity; a patched
    torch version leaves LightGBM (without its similarity features) reused."""
    import importlib.metadata

    models = {**package_models(), "lgbm": type(package_models()["lgbm"])({})}
    real_version = importlib.metadata.version

    def versions() -> dict[str, str]:
        return {name: fp.library_versions(m.library_names()) for name, m in models.items()}

    def patched(library: str):
        return lambda name: "99.0" if name == library else real_version(name)

    before = versions()
    train, _, folds = lgbm_data()
    art = tmp_path / "artifacts"
    run(capsys, "lgbm", LGBM, train, folds, art)
    for library, changed in (("lightgbm", ["lgbm"]), ("torch", ["dual_tower", "llm"]), ("peft", ["llm"])):
        monkeypatch.setattr(importlib.metadata, "version", patched(library))
        after = versions()
        assert sorted(m for m in models if after[m] != before[m]) == changed, library
        assert f"{library}==99.0" in after[changed[0]]
        log = run(capsys, "lgbm", LGBM, train, folds, art)[0]
        assert trained(log, 3) == ([0, 1, 2] if library == "lightgbm" else []), library
        if library == "lightgbm":
            saved = read_done(art / "models" / "lgbm" / "fold_0")["parts"]
            assert "lightgbm==99.0" in saved["libraries"]
        monkeypatch.setattr(importlib.metadata, "version", real_version)
        assert trained(run(capsys, "lgbm", LGBM, train, folds, art)[0], 3) == ([0, 1, 2] if library == "lightgbm"
                                                                              else [])


def test_lgbm_n_jobs_is_a_run_time_key(tmp_path, capsys):
    """LightGBM runs deterministic and row-wise: the thread count changes neither the model nor its identity."""
    train, test, folds = lgbm_data()
    _, oof, pred = run(capsys, "lgbm", LGBM, train, folds, tmp_path / "a", test)
    log, again, pred_again = run(capsys, "lgbm", {**LGBM, "n_jobs": 2}, train, folds, tmp_path / "a", test)
    assert reused(log, 3) == [0, 1, 2]
    _, fresh, fresh_pred = run(capsys, "lgbm", {**LGBM, "n_jobs": 2}, train, folds, tmp_path / "b", test)
    assert np.array_equal(fresh, oof) and np.array_equal(fresh_pred, pred)


# ----------------------------------------------------------------------------- the teachers part

@pytest.fixture
def lgbm_teacher():
    """A second name for LightGBM, so that LightGBM can be its student."""
    from ensemble.models import REGISTRY, register

    register("lgbm_teacher", "ensemble.models.lgbm:LGBMModel")
    yield "lgbm_teacher"
    REGISTRY.pop("lgbm_teacher")


def test_a_teacher_edit_makes_submit_refuse_the_student_naming_its_teachers(tmp_path, capsys, pinned_code,
                                                                           lgbm_teacher):
    """The reviewer's case: a student trained on an old teacher is refused by submit (and so by the bundle and
    the Judge, which check through it), naming its teachers, and its stage retrains it."""
    from ensemble.core.data import save_battles
    from ensemble.pipeline.submit import fold_dirs

    train, _, folds = lgbm_data()
    art = tmp_path / "artifacts"
    save_battles(art / "prepared" / "train.parquet", train)
    folds.to_parquet(art / "folds.parquet")
    student = {**LGBM, "distill": {"teachers": [lgbm_teacher], "weight": 0.5}}
    params = {"lgbm": student, lgbm_teacher: {**LGBM, "num_leaves": 7}}
    run_oof("lgbm", student, train, folds, art, params=params)
    assert len(fold_dirs(art, "lgbm", params)) == 3
    edited = {**params, lgbm_teacher: {**LGBM, "num_leaves": 9}}
    with pytest.raises(DataError, match=r"fold_0: no longer matches its fingerprint: its teachers changed") as err:
        fold_dirs(art, "lgbm", edited)
    assert "\n" not in str(err.value) and "--skip-code-check" not in str(err.value)
    capsys.readouterr()
    run_oof("lgbm", student, train, folds, art, params=edited)
    assert trained(capsys.readouterr().err, 3) == [0, 1, 2]
    assert len(fold_dirs(art, "lgbm", edited)) == 3
    # a run-time key of the teacher changes nothing
    run_oof("lgbm", student, train, folds, art, params={**edited, lgbm_teacher: {**edited[lgbm_teacher], "n_jobs": 2}})
    assert reused(capsys.readouterr().err, 3) == [0, 1, 2]


# ----------------------------------------------------------------------------- the grouping key

def test_prompt_key_normalises_case_space_width_and_keeps_the_first_turn():
    same = [["Hello world"], ["hello  world"], ["Hello\r\nworld"], ["\uff28\uff45\uff4c\uff4c\uff4f world"],
            ["  HELLO\tWorld "], ["Hello world", "and a second turn"]]
    assert {prompt_key(t) for t in same} == {"hello world"}
    assert prompt_key("Hello world") == "hello world"  # a bare string is one turn
    other = [["Hello world!"], ["Hello there"], ["Second turn first", "Hello world"], ["hello world again"],
             ["Helloworld"]]
    keys = [prompt_key(t) for t in other]
    assert len(set(keys)) == len(other) and "hello world" not in keys
    groups = prompt_groups(pd.DataFrame({"prompt": same + other}))
    assert len(set(groups[:len(same)])) == 1 and len(set(groups)) == 1 + len(other)
