import numpy as np
import pytest
from sklearn.naive_bayes import GaussianNB

from fedens.data import load_task
from fedens.experts import SklearnExpert, expert_outputs, load_experts, save_experts, train_expert_network


def test_sklearn_expert_aligns_unseen_classes_to_zero():
    X = np.random.default_rng(0).normal(size=(30, 4))
    y = np.array([1, 3, 4] * 10)
    proba = SklearnExpert(GaussianNB().fit(X, y), num_classes=6, name="nb").predict_proba(X)
    assert proba.shape == (30, 6)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-9)
    assert np.all(proba[:, [0, 2, 5]] == 0)


def test_network_of_specialised_experts_round_trips(tmp_path):
    task = load_task("digits", 0.3, 0.25, seed=0)
    experts = train_expert_network(task.public, 10, 4, ["logreg", "naive_bayes"], 3, 1.0, 0.05, 0)
    assert [e.family for e in experts] == ["logreg", "naive_bayes", "logreg", "naive_bayes"]
    P = expert_outputs(experts, task.test.X)
    assert P.shape == (len(task.test), 4, 10)
    save_experts(experts, tmp_path / "experts.skops")
    np.testing.assert_array_equal(expert_outputs(load_experts(tmp_path / "experts.skops"), task.test.X), P)
    # each expert is best on its specialty classes
    for k in range(4):
        specialty = np.isin(task.test.y, [(k + j) % 10 for j in range(3)])
        correct = P[:, k].argmax(1) == task.test.y
        assert correct[specialty].mean() > correct[~specialty].mean()


def test_every_family_ships_in_a_file_that_loads_without_code(tmp_path):
    """The experts file is skops: every expert family loads with fedens' reviewed types only."""
    from fedens.data import Split
    from fedens.experts.network import EXPERT_FAMILIES

    task = load_task("digits", 0.3, 0.25, seed=0)
    families = sorted(EXPERT_FAMILIES)
    for columns in (slice(None), slice(0, 6)):  # few features: nearest neighbours build a KD tree
        public = Split(task.public.X[:, columns], task.public.y)
        experts = train_expert_network(public, 10, len(families), families, 3, 1.0, 0.3, 0)
        save_experts(experts, tmp_path / "experts.skops")
        back = load_experts(tmp_path / "experts.skops")
        assert [(e.name, e.family, e.cost, e.site) for e in back] == [(e.name, e.family, e.cost, e.site)
                                                                      for e in experts]
        X = task.test.X[:, columns]
        np.testing.assert_array_equal(expert_outputs(back, X), expert_outputs(experts, X))


def test_an_experts_file_that_names_code_is_refused_before_anything_runs(tmp_path):
    import os
    import pickle

    import skops.io
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    task = load_task("digits", 0.3, 0.25, seed=0)
    hostile = make_pipeline(FunctionTransformer(os.system), GaussianNB())  # would run a shell command
    path = tmp_path / "experts.skops"
    path.write_bytes(skops.io.dumps({"format": "fedens-experts/1", "experts": [
        {"name": "x", "family": "x", "cost": 1.0, "site": None, "num_classes": 10, "estimator": hostile}]}))
    with pytest.raises(ValueError, match=r"holds types fedens does not load unless trusted: .*system"):
        load_experts(path)
    assert load_experts(path, trusted=[t for t in skops.io.get_untrusted_types(file=path)])  # a reader may
    path.write_bytes(pickle.dumps([SklearnExpert(GaussianNB().fit(task.public.X, task.public.y), 10, "nb")]))
    with pytest.raises(ValueError, match=r"experts.skops is not a fedens experts file"):
        load_experts(path)  # a pickle is never opened as one


def test_a_pickled_expert_is_read_only_when_trusted_and_only_if_the_sites_can_load_it(tmp_path):
    """joblib files run code when read: refused without ``trust_pickle``; trusted, the estimator is
    used, and one holding a type the sites do not load (they get it as skops) is refused."""
    import os

    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    from fedens.experts import load_expert_file

    task = load_task("digits", 0.3, 0.25, seed=0)
    model = LogisticRegression(max_iter=300).fit(task.public.X, task.public.y)
    joblib.dump(model, tmp_path / "lr.joblib")
    refusal = (r"^expert file lr.joblib is a pickle, which runs code when it is read: save it with "
               r"skops.io.dump, or set experts.trust_pickles=true")
    with pytest.raises(ValueError, match=refusal):
        load_expert_file(tmp_path / "lr.joblib", 10)
    expert = load_expert_file(tmp_path / "lr.joblib", 10, trust_pickle=True)
    assert expert.name == "lr" and np.array_equal(expert.predict_proba(task.test.X),
                                                  SklearnExpert(model, 10, "lr").predict_proba(task.test.X))
    joblib.dump(make_pipeline(FunctionTransformer(os.getcwd), GaussianNB()), tmp_path / "odd.pkl")
    with pytest.raises(ValueError, match=r"^expert file odd.pkl holds types the sites do not load: .*getcwd"):
        load_expert_file(tmp_path / "odd.pkl", 10, trust_pickle=True)
    (tmp_path / "broken.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"^expert file broken.pkl is not a readable pickle"):
        load_expert_file(tmp_path / "broken.pkl", 10, trust_pickle=True)


def test_unknown_family_and_empty_network_are_named():
    task = load_task("digits", 0.3, 0.25, seed=0)
    with pytest.raises(ValueError, match="transformer"):
        train_expert_network(task.public, 10, 2, ["transformer"], 3, 1.0, 0.05, 0)
    with pytest.raises(ValueError, match="non-empty"):
        expert_outputs([], task.test.X)


def test_saving_the_same_experts_twice_gives_the_same_file(tmp_path):
    import time

    task = load_task("digits", 0.3, 0.25, seed=0)
    experts = train_expert_network(task.public, 10, 2, ["logreg", "tree"], 3, 1.0, 0.05, 0)
    save_experts(experts, tmp_path / "a.skops")
    time.sleep(2.1)  # zip stamps entries to 2 s
    save_experts(experts, tmp_path / "b.skops")
    assert (tmp_path / "a.skops").read_bytes() == (tmp_path / "b.skops").read_bytes()


def test_an_experts_file_read_again_in_a_process_is_a_fresh_copy_not_a_second_audit(tmp_path, monkeypatch):
    import skops.io

    task = load_task("digits", 0.3, 0.25, seed=0)
    network = lambda seed: train_expert_network(task.public, 10, 3, ["logreg"], 3, 1.0, 0.05, seed)  # noqa: E731
    save_experts(network(0), tmp_path / "experts.skops")
    first = load_experts(tmp_path / "experts.skops")
    monkeypatch.setattr(skops.io, "loads", lambda *a, **k: pytest.fail("audited and built again"))
    second = load_experts(tmp_path / "experts.skops")
    assert second[0] is not first[0] and second[0].estimator is not first[0].estimator
    np.testing.assert_array_equal(expert_outputs(second, task.test.X), expert_outputs(first, task.test.X))
    first[0].estimator.coef_[:] = 0.0  # one site's copy changed ...
    assert load_experts(tmp_path / "experts.skops")[0].estimator.coef_.any()  # ... not the next one's
    save_experts(network(1), tmp_path / "experts.skops")  # other bytes
    with pytest.raises(pytest.fail.Exception, match="built again"):
        load_experts(tmp_path / "experts.skops")
