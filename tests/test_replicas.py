"""One replica per device at inference, on CPU: `cpu:0` and `cpu:1` are distinct device keys, so the LLM builds
two model copies (as on [cuda:0, cuda:1]) and run_sharded drives them from two threads. The predictions come
back complete, in input order and equal to one device's."""

import numpy as np
import pytest
import torch
from conftest import battle_frame, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_two_distinct_llm_replicas_each_serve_batches_and_match_one_device(tiny_llm, tmp_path):
    from ensemble.models.llm.model import LLMModel

    config = tiny_config(tiny_llm, calib_frac=0.0, train={"max_steps": 2, "batch_size": 4, "lr": 5e-3, "seed": 0})
    LLMModel(config).fit(battle_frame(24, 0)).save(tmp_path / "fold")
    frame = battle_frame(30, 1).sample(frac=1.0, random_state=0).reset_index(drop=True)  # lengths unsorted
    single = LLMModel.load(tmp_path / "fold").predict_proba(frame)

    model = LLMModel.load(tmp_path / "fold", runtime={"devices": ["cpu:0", "cpu:1"]})
    devices = [torch.device("cpu:0"), torch.device("cpu:1")]
    replicas = [model._replicas.get(d) for d in devices]
    assert replicas[0] is not replicas[1]  # two model copies, not one shared
    p0 = {id(p) for p in replicas[0].parameters()}
    assert not p0 & {id(p) for p in replicas[1].parameters()}
    calls = [0, 0]
    for i, net in enumerate(replicas):
        net.register_forward_hook(lambda mod, args, out, i=i: calls.__setitem__(i, calls[i] + 1))
    sharded = model.predict_proba(frame)

    assert sorted(model._replicas.models) == ["cpu:0", "cpu:1"]
    assert calls[0] > 0 and calls[1] > 0, calls  # each replica served batches
    assert sharded.shape == (len(frame), 3) and np.isfinite(sharded).all()
    np.testing.assert_allclose(sharded, single, atol=1e-6, rtol=0)  # complete and in input order
