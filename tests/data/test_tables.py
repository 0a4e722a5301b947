"""Your own records from a file (data=local): every format reads to the same task, the encoder is
fitted on the public part only, sites come from a column, and the quickstart runs on a table no
fedens code ships, by config alone, through Flower's Simulation Engine."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pandas.api.types import is_numeric_dtype
from wine_tables import data_cfg, hydra_value, own_experts, skl2onnx_file, torch_file, wine_table

from fedens.data import PARTITIONS
from fedens.data.tables import TableError, load_table_task, read_table, split_rows


def test_every_format_reads_to_the_same_task(tmp_path):
    from datasets import Dataset

    frame = wine_table(tmp_path / "wine.csv")
    frame.to_parquet(tmp_path / "wine.parquet")
    frame.to_json(tmp_path / "wine.jsonl", orient="records", lines=True)
    np.savez(tmp_path / "wine.npz", **{c: frame[c].to_numpy(dtype=None if is_numeric_dtype(frame[c]) else str)
                                      for c in frame.columns})
    Dataset.from_pandas(frame, preserve_index=False).save_to_disk(str(tmp_path / "wine_dataset"))
    first = load_table_task(data_cfg(tmp_path / "wine.csv"), "hospital", seed=0)
    assert first.labels == ("cultivar_0", "cultivar_1", "cultivar_2")
    assert first.task.public.X.shape[1] == 13 + 2  # 13 numbers, a text column of 2 categories
    for other in ("wine.parquet", "wine.jsonl", "wine.npz", "wine_dataset"):
        task = load_table_task(data_cfg(tmp_path / other), "hospital", seed=0)
        for part in ("public", "private", "test"):
            np.testing.assert_allclose(getattr(task.task, part).X, getattr(first.task, part).X, rtol=1e-6,
                                       atol=1e-6)  # CSV and JSON print floats to 15-17 digits
            np.testing.assert_array_equal(getattr(task.task, part).y, getattr(first.task, part).y)
        np.testing.assert_array_equal(task.groups, first.groups)


def test_the_encoder_is_fitted_on_the_public_part_only(tmp_path):
    wine_table(tmp_path / "wine.csv")
    table = load_table_task(data_cfg(tmp_path / "wine.csv"), None, seed=0)
    public = table.task.public.X
    numeric = public[:, :13]
    np.testing.assert_allclose(numeric.mean(axis=0), 0, atol=1e-5)  # standardised by the public rows
    np.testing.assert_allclose(numeric.std(axis=0), 1, atol=1e-4)
    assert abs(table.task.private.X[:, :13].mean()) > 1e-3  # the others only transformed
    # a category only the test rows hold encodes as all zeros
    table_rows = read_table(str(tmp_path / "wine.csv"), "cultivar", None, None, None)
    _, _, test = split_rows(table_rows, 0.3, 0.25, 0)
    frame = pd.read_csv(tmp_path / "wine.csv")
    frame.loc[test[:5], "colour_band"] = "violet"
    frame.to_csv(tmp_path / "violet.csv", index=False)
    violet = load_table_task(data_cfg(tmp_path / "violet.csv"), None, seed=0)
    assert violet.encoder.categories["colour_band"] == ("dark", "light")
    in_test = np.isin(np.sort(test), test[:5])
    colour = violet.task.test.X[:, -2:]  # its last columns: after the numbers and the hospital
    assert (colour[in_test] == 0).all() and (colour[~in_test].sum(axis=1) == 1).all()


def test_sites_by_column_are_the_columns_values(tmp_path):
    wine_table(tmp_path / "wine.csv")
    table = load_table_task(data_cfg(tmp_path / "wine.csv"), "hospital", seed=0)
    sites = PARTITIONS.split("natural_id", table.task.private.y, 4, 0, groups=table.groups, column="hospital")
    for name, records in zip(["east", "north", "south", "west"], sites, strict=True):
        assert set(table.groups[records]) == {name}
    assert sorted(np.concatenate(sites).tolist()) == list(range(len(table.task.private)))
    with pytest.raises(ValueError, match=r"names 4 sites \('east', 'north', 'south', 'west'\): expected "
                                         r"federation.num_sites=10; set federation.num_sites=4"):
        PARTITIONS.split("natural_id", table.task.private.y, 10, 0, groups=table.groups, column="hospital")


def test_labels_outside_the_declared_set_are_named(tmp_path):
    wine_table(tmp_path / "wine.csv")
    with pytest.raises(TableError, match=r"column 'cultivar' has label 'cultivar_2' \(row \d+\): expected "
                                         r"one of data.labels=\['cultivar_0', 'cultivar_1'\]"):
        load_table_task(data_cfg(tmp_path / "wine.csv", labels=["cultivar_0", "cultivar_1"]), None, seed=0)


def test_your_experts_get_the_tables_own_columns_and_labels(tmp_path):
    from fedens.data.tables import table_schema
    from fedens.experts import expert_outputs, load_expert_file, load_experts, save_experts
    from fedens.experts.base import decoded_table

    frame = wine_table(tmp_path / "wine.csv")
    table = load_table_task(data_cfg(tmp_path / "wine.csv"), "hospital", seed=0)
    schema, test = table_schema(table, "cultivar"), table.task.test
    _, _, test_rows = split_rows(read_table(str(tmp_path / "wine.csv"), "cultivar", None, "hospital", None),
                                 0.3, 0.25, 0)
    decoded, raw = decoded_table(test.X, schema), frame.iloc[test_rows]
    np.testing.assert_allclose(decoded["proline"], raw["proline"], rtol=1e-5)  # to float32 precision
    assert decoded["colour_band"].tolist() == raw["colour_band"].tolist()
    experts = [load_expert_file(p, 3, schema, table.labels) for p in own_experts(frame, tmp_path)]
    P = expert_outputs(experts, test.X)
    assert P.shape == (len(test), 2, 3) and (P[:, 0].argmax(axis=1) == test.y).mean() > 0.8
    save_experts(experts, tmp_path / "shipped.skops")  # what the coordinator ships its sites
    np.testing.assert_array_equal(expert_outputs(load_experts(tmp_path / "shipped.skops"), test.X), P)


@pytest.mark.slow
def test_the_quickstart_runs_on_your_table_with_your_experts_by_config_alone(tmp_path):
    from fedens import run
    from fedens.runs import compose

    frame = wine_table(tmp_path / "wine.csv")
    numbers = [c for c in frame.columns if c not in ("cultivar", "hospital", "colour_band")]
    skl2onnx_file(frame, numbers, tmp_path / "converted.onnx")
    entries = [*own_experts(frame, tmp_path), str(tmp_path / "converted.onnx"),  # skops, skops, ONNX
               torch_file(frame, numbers, tmp_path / "linear.pt")]  # a torch state dict
    cfg = compose(["data=local", f"data.path={tmp_path / 'wine.csv'}", "data.label=cultivar",
                   "partition=natural_id", "partition.column=hospital", "federation.num_sites=4",
                   "federation.num_rounds=3", "experts=own", f"experts.members={hydra_value(entries)}",
                   "combiner.top_k=1", "combiner.central_epochs=5"])
    results = run(cfg, run_dir=tmp_path / "run")
    assert results["data"]["name"] == "wine.csv" and results["data"]["num_classes"] == 3
    assert results["cost"]["num_experts"] == 4
    from fedens.experts import load_experts

    shipped = load_experts(tmp_path / "run" / "experts.skops")  # what the sites ran: no torch, no pickle
    assert [type(e).__name__ for e in shipped] == ["SklearnExpert"] * 2 + ["OnnxExpert"] * 2
    assert results["data"]["site_names"] == ["east", "north", "south", "west"]
    assert sum(results["data"]["site_sizes"]) == 178 - 53 - 45  # the private part
    assert 0 < results["metrics"]["test_balanced_accuracy"] <= 1
    assert results["metrics"]["test_accuracy"] > results["baselines"]["majority_class_accuracy"]


def test_a_table_changed_on_disk_is_read_again(tmp_path):
    import time

    frame = wine_table(tmp_path / "wine.csv")
    first = load_table_task(data_cfg(tmp_path / "wine.csv"), None, seed=0)
    assert load_table_task(data_cfg(tmp_path / "wine.csv"), None, seed=0) is first  # cached
    time.sleep(0.01)
    frame.iloc[:150].to_csv(tmp_path / "wine.csv", index=False)
    again = load_table_task(data_cfg(tmp_path / "wine.csv"), None, seed=0)
    assert len(again.task.test) < len(first.task.test)
