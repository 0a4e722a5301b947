"""``fedens summarize``: tables over seeds and the plot against ε, from run directories."""

import json

import numpy as np
import pytest

from fedens.cli import main
from fedens.runs.summary import collect, over_seeds


def write_run(root, name, epsilon, seed, dp, public, nonprivate):
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(
        f"- privacy.epsilon={epsilon}\n- seed={seed}\n- hydra.run.dir=x\n")
    results = {"seed": seed,
               "metrics": {"test_accuracy": dp, "router_topk_accuracy": dp - 0.01, "weights_accuracy": dp},
               "baselines": {"uniform_mean_accuracy": 0.6, "best_single_expert_accuracy": 0.4},
               "private_data": {"public_only_accuracy": public, "federated_nonprivate_accuracy": nonprivate,
                                "gain_over_public_only": dp - public,
                                "gain_over_public_only_ci95": [dp - public - 0.02, dp - public + 0.02]},
               "privacy": {"epsilon_target": float(epsilon), "epsilon_max": float(epsilon)},
               "timing": {"wall_s": 60.0}}
    (run / "results.json").write_text(json.dumps(results))


@pytest.fixture
def sweep(tmp_path):
    rng = np.random.default_rng(0)
    truth = {}
    for i, (epsilon, seed) in enumerate((e, s) for e in (1, 8) for s in (0, 1, 2)):
        dp = float(rng.uniform(0.6, 0.8))
        write_run(tmp_path, str(i), epsilon, seed, dp, 0.6, 0.8)
        truth.setdefault(epsilon, []).append(dp)
    return tmp_path, truth


def test_runs_are_grouped_over_seeds_by_setting(sweep):
    root, truth = sweep
    rows = collect(root)
    assert len(rows) == 6 and {r["run"] for r in rows} >= {"privacy.epsilon=1 seed=0"}
    summary = over_seeds(rows)
    assert [(e["setting"], e["n"]) for e in summary] == [("privacy.epsilon=1", 3), ("privacy.epsilon=8", 3)]
    for entry in summary:
        mean, sd = entry["DP"]
        assert mean == pytest.approx(np.mean(truth[int(entry["epsilon"])]))
        assert sd == pytest.approx(np.std(truth[int(entry["epsilon"])], ddof=1))
        assert entry["public only"] == (0.6, 0.0)


def test_summarize_prints_both_tables_and_plots_against_epsilon(sweep, capsys):
    root, _ = sweep
    main(["summarize", str(root)])
    out = capsys.readouterr().out
    assert "mean ± sd over seeds" in out and "privacy.epsilon=8 seed=2" in out
    assert (root / "accuracy_vs_epsilon.png").stat().st_size > 10_000


def test_summarize_of_a_directory_without_runs_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["summarize", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no results.json under" in err[0]
