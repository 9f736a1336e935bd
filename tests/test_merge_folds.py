"""llm.merge_folds: the K fold models become one (the exact mean of the LoRA deltas, the mean head and
calibration), submit predicts once; folds with other LoRA settings are refused."""

import numpy as np
import pytest
from conftest import battle_frame, finished_llm_run

from ensemble.core.errors import ModelLoadError
from ensemble.models import load
from ensemble.models.llm.merge import merge_folds
from ensemble.pipeline.submit import predict_model


@pytest.fixture(scope="module")
def llm_folds(tmp_path_factory, tiny_llm, one_torch_thread):
    run = finished_llm_run(tmp_path_factory.mktemp("merge"), tiny_llm, battle_frame(36, seed=4), 30, 3)
    with pytest.MonkeyPatch.context() as mp:  # submit checks the folds' code part: the pinned one
        mp.setattr("ensemble.core.fingerprint.code_digest", lambda modules: "code-pinned")
        yield run["art"], run["config"], run["test"], mp


def _delta(state, a_key):
    b_key = a_key.replace(".lora_A.", ".lora_B.")
    return state[b_key].float() @ state[a_key].float()


def test_merge_folds_averages_the_lora_deltas_exactly_and_submit_predicts_once(llm_folds, capsys):
    """Breaks if A and B are averaged separately (mean(B) @ mean(A) is not the mean delta), if the rank and
    alpha are not scaled together, or if submit still loops over the folds."""
    art, config, test, _ = llm_folds
    models = [load(art / "models" / "llm" / f"fold_{k}") for k in range(3)]
    merged = merge_folds(models)
    assert merged.config.lora_r == 3 * config["lora_r"] and merged.config.lora_alpha == 3 * config["lora_alpha"]
    a_keys = [k for k in merged.adapter_state if ".lora_A." in k]
    assert a_keys
    for key in a_keys:
        mean_delta = sum(_delta(m.adapter_state, key) for m in models) / 3
        np.testing.assert_allclose(_delta(merged.adapter_state, key).numpy(), mean_delta.numpy(), atol=1e-6)
        naive = (sum(m.adapter_state[key.replace(".lora_A.", ".lora_B.")].float() for m in models) / 3) @ (
            sum(m.adapter_state[key].float() for m in models) / 3)
        assert not np.allclose(naive.numpy(), mean_delta.numpy(), atol=1e-6)  # why the adapters are stacked
    params = {"llm": {**config, "merge_folds": True}}
    capsys.readouterr()
    one = predict_model(art, "llm", test, params)
    log = capsys.readouterr().err
    assert "3 folds merged into one model" in log and "predicting with" in log and "fold_1" not in log
    folds_avg = predict_model(art, "llm", test, {"llm": config})
    assert one.shape == folds_avg.shape and np.allclose(one.sum(1), 1)
    assert np.abs(one - folds_avg).max() < 0.1  # close, not equal: the average moved inside the network


def test_merge_folds_refuses_folds_with_other_lora_settings(llm_folds):
    art, config, _, _ = llm_folds
    models = [load(art / "models" / "llm" / f"fold_{k}") for k in range(2)]
    key = next(k for k in models[1].adapter_state if ".lora_A." in k)
    models[1].adapter_state[key] = models[1].adapter_state[key][:2]  # as if trained with another lora_r
    with pytest.raises(ModelLoadError) as err:
        merge_folds(models)
    assert "fold model 1's" in str(err.value) and "lora_r" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelLoadError, match="no fold models"):
        merge_folds([])


def test_merging_k_copies_of_one_fold_gives_that_fold(llm_folds):
    """The exact part of the merge: K copies of one fold are that fold (rank K*r, alpha K*alpha, deltas
    averaged exactly). Breaks if the 1/K on B or the alpha scaling is lost."""
    art, _, test, _ = llm_folds
    one = load(art / "models" / "llm" / "fold_0")
    merged = merge_folds([one, load(art / "models" / "llm" / "fold_0"), load(art / "models" / "llm" / "fold_0")])
    np.testing.assert_allclose(merged.predict_proba(test), one.predict_proba(test), atol=1e-5)
