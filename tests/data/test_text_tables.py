"""A table with a free-text column (data.text): TF-IDF features for the router and the trained
experts, the raw text for the experts that read it (the user's own text pipeline, a language
model, an OpenAI-compatible endpoint), asked at the sites about the sites' own records. A site
sends no record to an endpoint it has not allowed: it refuses, and nothing is charged."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_lm import tiny_lm
from wine_tables import hydra_value

from fedens.data.rows import TextRows
from fedens.federation import layout as L
from fedens.privacy import PrivacyLedger

GOOD = ["tasty", "fresh", "lovely", "crisp", "delicious", "perfect"]
BAD = ["stale", "bland", "soggy", "broken", "awful", "late"]
FILLER = ["the", "box", "came", "with", "a", "snack", "for", "my", "kids", "and", "it", "was"]
SHOPS = ["north", "south", "east"]


def reviews(path, n=180, seed=0):
    """Made-up product reviews: a verdict, a shop (the sites) and a text whose words say the
    verdict most of the time."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        great = rng.random() < 0.6
        words = list(rng.choice(FILLER, size=6))
        hint = GOOD if (great if rng.random() < 0.85 else not great) else BAD
        words[int(rng.integers(0, 6))] = str(rng.choice(hint))
        rows.append({"review": " ".join(words), "verdict": "great" if great else "other",
                     "shop": SHOPS[i % len(SHOPS)]})
    frame = pd.DataFrame(rows)
    frame.to_csv(path, index=False)
    return frame


def text_pipeline(frame, path):
    """The user's own text classifier on the review column: TF-IDF and a logistic regression,
    fitted on 60 rows of their own, saved with skops."""
    import skops.io
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    rows = frame.sample(60, random_state=5)
    model = make_pipeline(ColumnTransformer([("words", TfidfVectorizer(), "review")]),
                          LogisticRegression(max_iter=1000))
    model.fit(rows[["review"]], rows["verdict"])
    skops.io.dump(model, path)
    return str(path)


def members(tmp_path, frame, server):
    prompt = "Review: {review} Verdict:"
    return [text_pipeline(frame, tmp_path / "words.skops"),
            {"kind": "causal_lm", "name": "tiny-lm", "model_path": tiny_lm(tmp_path / "lm"), "prompt": prompt,
             "answers": {"great": "good", "other": "bad"}, "batch_size": 8},
            {"kind": "openai_chat", "name": "endpoint", "base_url": server.url, "model": "logprobs",
             "prompt": prompt, "answers": ["good", "bad"], "calibrate": False}]


def config(compose, tmp_path, frame, server, *extra):
    return compose("data=local", f"data.path={tmp_path / 'reviews.csv'}", "data.label=verdict",
                   "data.text=[review]", "data.text_features=32", "partition=natural_id",
                   "partition.column=shop", "federation.num_sites=3", "federation.num_rounds=2",
                   "federation.personalization.holdout=0", "experts=own",
                   f"experts.members={hydra_value(members(tmp_path, frame, server))}",
                   "combiner.central_epochs=2", "combiner.pretrain_epochs=1", *extra)


def test_a_text_column_is_tfidf_for_the_router_and_raw_text_for_the_experts(tmp_path):
    from wine_tables import data_cfg

    from fedens.data.tables import load_table_task, read_site_table, table_schema

    frame = reviews(tmp_path / "reviews.csv")
    cfg = data_cfg(tmp_path / "reviews.csv", label="verdict", text=["review"], text_features=16)
    table = load_table_task(cfg, "shop", seed=0)
    public = table.task.public
    assert public.X.shape[1] == 16 and set(public.text) == {"review"}
    schema = table_schema(table, "verdict")
    assert len(schema["text"]["review"]["words"]) == 16 and schema["categories"] == {}
    inputs, y = read_site_table(tmp_path / "reviews.csv", schema)  # a site encodes as the coordinator did
    assert isinstance(inputs, TextRows) and list(inputs.text["review"]) == list(frame["review"])
    part = inputs[np.array([4, 0, 2, 1, 3])]
    assert part.X.shape == (5, 16)
    assert list(part.text["review"]) == list(frame["review"].iloc[[4, 0, 2, 1, 3]])
    from sklearn.feature_extraction.text import TfidfVectorizer

    words = schema["text"]["review"]["words"]  # the public part's most frequent words, as sklearn fits them
    fitted = TfidfVectorizer(max_features=16, sublinear_tf=True).fit(public.text["review"])
    assert list(fitted.get_feature_names_out()) == words
    np.testing.assert_allclose(inputs.X[:20], fitted.transform(frame["review"][:20]).toarray(), atol=1e-6)


def test_lm_and_endpoint_experts_read_the_sites_text_through_the_federation(compose, tmp_path, chat_server,
                                                                            in_process_engine):
    from fedens import run
    from fedens.experts import CausalLMExpert, OpenAIChatExpert, PromptedExpert, load_experts

    frame = reviews(tmp_path / "reviews.csv")
    asked_before = len(chat_server.requests)
    cfg = config(compose, tmp_path, frame, chat_server, f"federation.allow_endpoints=[{chat_server.url}]")
    results = run(cfg, run_dir=tmp_path / "run")
    shipped = load_experts(tmp_path / "run" / "experts.skops")  # what the sites rebuilt, code-free
    assert [type(e).__name__ for e in shipped] == ["SklearnExpert", "PromptedExpert", "PromptedExpert"]
    lm, endpoint = shipped[1], shipped[2]
    assert isinstance(lm.inner, CausalLMExpert) and lm.bias is not None  # calibrated on public records
    assert isinstance(endpoint.inner, OpenAIChatExpert) and endpoint.bias is None
    assert "api_key" not in endpoint.to_record()["inner"]
    private, public = sum(results["data"]["site_sizes"]), 180 - 45 - sum(results["data"]["site_sizes"])
    asked = [r["messages"][-1]["content"] for r in chat_server.requests[asked_before:]]
    assert all(any(review in question for review in frame["review"]) for question in asked)
    # the coordinator: 8 public records (the check before the run), the public part (the router's
    # start), the test part and, in simulation only, the private part (the baselines); each site:
    # its own records once, in round 1 (round 2 reads its outputs cache)
    assert len(asked) == 8 + public + 45 + private + private
    for site in range(3):
        ledger = PrivacyLedger.read(tmp_path / "run" / "sites" / f"site_{site}" / "ledger.sqlite")
        assert [e["mechanism"] for e in ledger.records()] == ["dpsgd", "dpsgd"]
    assert results["data"]["site_names"] == sorted(SHOPS)
    assert results["cost"]["num_experts"] == 3
    assert 0 <= results["metrics"]["test_accuracy"] <= 1
    assert isinstance(lm, PromptedExpert)


def test_a_site_refuses_an_endpoint_it_has_not_allowed_and_is_charged_nothing(compose, tmp_path, chat_server,
                                                                               in_process_engine):
    from fedens import run

    frame = reviews(tmp_path / "reviews.csv")
    cfg = config(compose, tmp_path, frame, chat_server)  # federation.allow_endpoints=[] (default)
    with pytest.raises(Exception) as raised:
        run(cfg, run_dir=tmp_path / "run")
    said = str(raised.value)
    assert chat_server.url in said and "allow-endpoints" in said and "\n" not in said
    report = json.loads((L.federation_dir(tmp_path / "run") / "rounds.json").read_text())
    kinds = {f["kind"] for round_failures in report["failures"].values() for f in round_failures}
    assert kinds == {"endpoint-refused"}
    for site in range(3):
        path = tmp_path / "run" / "sites" / f"site_{site}" / "ledger.sqlite"
        assert not path.exists() or PrivacyLedger.read(path).records() == []


def test_a_site_rebuilds_a_language_model_only_from_the_same_model_file(tmp_path):
    from fedens.experts import CausalLMExpert

    record = CausalLMExpert(model_path=tiny_lm(tmp_path / "lm"), name="tiny").to_record()
    assert CausalLMExpert.from_record(record).model_id() == record["model_sha256"]
    with pytest.raises(ValueError, match=r"^expert 'tiny': the model at .* has sha256 \w+\.\.\., the coordi"
                                         r"nator's 0000000000000000\.\.\.: install the same model file$"):
        CausalLMExpert.from_record({**record, "model_sha256": "0" * 64})


ENTRY = {"kind": "causal_lm", "name": "lm", "prompt": "Review: {review}", "answers": ["good", "bad"]}


@pytest.mark.parametrize("entry, said", [
    ({**ENTRY, "kind": "gpt"}, r"^expert 'lm' has kind 'gpt': expected causal_lm or openai_chat"),
    ({**ENTRY, "prompt": ""}, r"^expert 'lm' \(causal_lm\) has no prompt"),
    ({**ENTRY, "answers": ["good"]}, r"^expert 'lm': answers \['good'\]: expected 2 answer texts"),
    ({**ENTRY, "answers": {"great": "good", "poor": "bad"}},
     r"^expert 'lm': answers name labels \['great', 'poor'\]: expected one answer for each of the task's "
     r"labels \['great', 'other'\]$"),
    ({**ENTRY, "temperature": 0.5}, r"^expert 'lm' \(causal_lm\): .*temperature"),
    ({"_target_": "collections.OrderedDict"},
     r"^expert entry _target_='collections.OrderedDict' built an object of type OrderedDict: expected a "
     r"registered expert adapter"),
    ({"_target_": "fedens.experts.Nowhere"},
     r"^expert entry _target_='fedens.experts.Nowhere' cannot be built"),
])
def test_a_model_entry_that_cannot_be_an_expert_is_one_line_naming_it(entry, said):
    from fedens.experts import load_expert_entry

    with pytest.raises(ValueError, match=said) as raised:
        load_expert_entry(entry, 2, label_names=("great", "other"))
    assert "\n" not in str(raised.value)


def test_experts_by_target_and_a_prompt_naming_no_text_column_is_refused_before_the_run(tmp_path):
    from fedens import compose, validate
    from fedens.experts import OpenAIChatExpert, PromptedExpert, load_expert_entry, make_expert

    built = load_expert_entry({"_target_": "fedens.experts.PromptedExpert", "prompt": "Review: {review}",
                               "answers": ["good", "bad"], "name": "by-target",
                               "inner": {"_target_": "fedens.experts.OpenAIChatExpert",
                                         "base_url": "http://127.0.0.1:9/v1", "model": "m"}}, 2)
    assert isinstance(built, PromptedExpert) and isinstance(built.inner, OpenAIChatExpert)
    assert make_expert("prompted", inner=built.inner, prompt="{review}", answers=("a", "b")).cost == 1.0
    reviews(tmp_path / "reviews.csv")
    entry = {**ENTRY, "model_path": tiny_lm(tmp_path / "lm"), "prompt": "Title: {title}"}
    cfg = compose(["data=local", f"data.path={tmp_path / 'reviews.csv'}", "data.label=verdict",
                   "data.text=[review]", "experts=own", f"experts.members={hydra_value([entry])}"])
    with pytest.raises(Exception, match=r"prompt names column 'title', which is not a text column of the "
                                        r"task: expected one of \['review'\] \(data.text\)"):
        validate(cfg)
