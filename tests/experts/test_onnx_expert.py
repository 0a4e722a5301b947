"""Experts from ONNX graphs and torch state dicts: they answer as the models they came from, reach
the sites inside the code-free experts file, and bad files are one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from wine_tables import data_cfg, own_experts, skl2onnx_file, wine_table

from fedens.data.tables import load_table_task, table_schema
from fedens.experts import (
    OnnxExpert,
    expert_outputs,
    experts_bytes,
    load_expert_file,
    load_experts,
    save_experts,
)
from fedens.experts.base import decoded_table

NET = '''
import torch

class Net(torch.nn.Module):
    def __init__(self, inputs, hidden=16, classes=3):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.ReLU(),
                                        torch.nn.Linear(hidden, classes))

    def forward(self, x):
        return self.body(x)
'''


@pytest.fixture
def wine(tmp_path):
    frame = wine_table(tmp_path / "wine.csv")
    table = load_table_task(data_cfg(tmp_path / "wine.csv"), "hospital", seed=0)
    numbers = [c for c in frame.columns if c not in ("cultivar", "hospital", "colour_band")]
    return frame, table, table_schema(table, "cultivar"), numbers


@pytest.mark.parametrize("zipmap", [True, False])
def test_a_converted_scikit_learn_pipeline_answers_as_the_pipeline(tmp_path, wine, zipmap):
    frame, table, schema, numbers = wine
    model = skl2onnx_file(frame, numbers, tmp_path / "lr.onnx", **({} if zipmap else {"zipmap": False}))
    expert = load_expert_file(tmp_path / "lr.onnx", 3, schema, table.labels)
    X = table.task.test.X
    expected = model.predict_proba(decoded_table(X, schema)[numbers + ["colour_band"]])
    np.testing.assert_allclose(expert.predict_proba(X), expected, atol=1e-5)
    assert expert.labels == ("cultivar_0", "cultivar_1", "cultivar_2")  # read from the graph


def test_an_expert_that_knows_some_classes_answers_zero_for_the_others(tmp_path, wine):
    frame, table, schema, numbers = wine
    model = skl2onnx_file(frame, numbers, tmp_path / "two.onnx", classes=["cultivar_0", "cultivar_2"],
                          zipmap=False)
    P = load_expert_file(tmp_path / "two.onnx", 3, schema, table.labels).predict_proba(table.task.test.X)
    assert (P[:, 1] == 0).all()
    expected = model.predict_proba(decoded_table(table.task.test.X, schema)[numbers + ["colour_band"]])
    np.testing.assert_allclose(P[:, [0, 2]], expected, atol=1e-5)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_torch_state_dict_becomes_an_onnx_graph_that_answers_as_the_module(tmp_path, monkeypatch, wine,
                                                                              suffix):
    from safetensors.torch import save_file

    frame, table, schema, numbers = wine
    (tmp_path / "mynet.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    from mynet import Net

    torch.manual_seed(0)
    net = Net(len(numbers)).eval()
    path = tmp_path / f"net{suffix}"
    torch.save(net.state_dict(), path) if suffix == ".pt" else save_file(net.state_dict(), path)
    entry = {"path": str(path), "module": "mynet:Net", "kwargs": {"inputs": len(numbers)}, "columns": numbers,
             "name": "mlp", "cost": 2.5}
    expert = load_expert_file(entry, 3, schema, table.labels)
    assert isinstance(expert, OnnxExpert)
    assert (expert.name, expert.family, expert.cost) == ("mlp", "torch", 2.5)
    X = table.task.test.X
    inputs = torch.tensor(decoded_table(X, schema)[numbers].to_numpy(np.float32))
    expected = torch.softmax(net(inputs), 1).detach().numpy()
    np.testing.assert_allclose(expert.predict_proba(X), expected, atol=1e-6)


def test_on_a_feature_array_the_module_takes_the_tasks_features(tmp_path):
    from fedens.data import load_task

    task = load_task("digits", 0.3, 0.25, seed=0)
    torch.manual_seed(0)
    linear = torch.nn.Linear(task.public.X.shape[1], 10)
    torch.save(linear.state_dict(), tmp_path / "linear.pt")
    entry = {"path": str(tmp_path / "linear.pt"), "module": "torch.nn.Linear",
             "kwargs": {"in_features": task.public.X.shape[1], "out_features": 10}}
    expert = load_expert_file(entry, 10, num_features=task.public.X.shape[1])
    expected = torch.softmax(linear(torch.tensor(task.test.X)), 1).detach().numpy()
    np.testing.assert_allclose(expert.predict_proba(task.test.X), expected, atol=1e-6)


def test_the_sites_get_onnx_and_sklearn_experts_in_one_code_free_file(tmp_path, wine):
    import skops.io

    from fedens.experts.base import EXPERTS_FORMAT, TRUSTED_TYPES

    frame, table, schema, numbers = wine
    skl2onnx_file(frame, numbers, tmp_path / "lr.onnx")
    experts = [load_expert_file(p, 3, schema, table.labels)
               for p in [*own_experts(frame, tmp_path), str(tmp_path / "lr.onnx")]]
    assert experts_bytes(experts) == experts_bytes(experts)  # the same network, the same bytes
    save_experts(experts, tmp_path / "shipped.skops")
    beyond = skops.io.get_untrusted_types(file=tmp_path / "shipped.skops")
    assert set(beyond) <= set(TRUSTED_TYPES)  # the forest's trees; an ONNX graph is a uint8 array
    back = load_experts(tmp_path / "shipped.skops")
    assert [type(e).__name__ for e in back] == ["SklearnExpert", "SklearnExpert", "OnnxExpert"]
    X = table.task.test.X
    np.testing.assert_array_equal(expert_outputs(back, X), expert_outputs(experts, X))
    # a file of the first format (scikit-learn records, no adapter named) still loads
    old = {"format": "fedens-experts/1", "experts": [{k: v for k, v in experts[0].to_record().items()}]}
    (tmp_path / "old.skops").write_bytes(skops.io.dumps(old))
    assert EXPERTS_FORMAT != "fedens-experts/1"
    np.testing.assert_array_equal(load_experts(tmp_path / "old.skops")[0].predict_proba(X),
                                  experts[0].predict_proba(X))


def test_bad_onnx_experts_are_one_line_errors(tmp_path, wine):
    from fedens.experts.onnx_expert import torch_to_onnx

    frame, table, schema, numbers = wine
    X = table.task.test.X
    (tmp_path / "matrix.onnx").write_bytes(torch_to_onnx(torch.nn.Linear(len(schema["features"]), 3), 14))
    with pytest.raises(ValueError, match=r"^expert 'matrix': column 'colour_band' is not numeric: a "
                                         r"one-input ONNX model takes numbers; list its numeric columns"):
        load_expert_file(tmp_path / "matrix.onnx", 3, schema, table.labels).predict_proba(X)
    narrow = load_expert_file({"path": str(tmp_path / "matrix.onnx"), "columns": numbers[:5]}, 3, schema,
                              table.labels)
    with pytest.raises(ValueError, match=r"^expert 'matrix' failed on inputs of shape \(\d+, 15\) \("):
        narrow.predict_proba(X)
    scores = load_expert_file({"path": str(tmp_path / "matrix.onnx"), "columns": numbers + numbers[:1]}, 3,
                              schema, table.labels)
    with pytest.raises(ValueError, match=r"^expert 'matrix'.*: if the graph gives scores, set outputs: "
                                         r"logits$"):
        scores.predict_proba(X)  # logits read as probabilities
    with pytest.raises(ValueError, match=r"^expert 'matrix' answers label 'red': expected labels of the "
                                         r"task"):
        load_expert_file({"path": str(tmp_path / "matrix.onnx"), "columns": numbers + numbers[:1],
                          "outputs": "logits", "labels": ["red", "green", "blue"]}, 3, schema,
                         table.labels).predict_proba(X)
    with pytest.raises(ValueError, match=r"^expert file matrix.onnx has option 'module': expected options "
                                         r"of a .onnx file from \['columns', 'cost', 'labels', 'name', "
                                         r"'outputs'\]"):
        load_expert_file({"path": str(tmp_path / "matrix.onnx"), "module": "x:Y"}, 3, schema, table.labels)
    skl2onnx_file(frame, numbers, tmp_path / "lr.onnx")
    with pytest.raises(ValueError, match=r"^expert file lr.onnx: expert 'lr': the ONNX graph takes input "
                                         r"'proline': expected one input, or one per table column"):
        fewer = {**schema, "features": schema["features"][:-2]}
        load_expert_file(tmp_path / "lr.onnx", 3, fewer, table.labels)
