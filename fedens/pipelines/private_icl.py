"""``pipeline=private_icl`` (``experiment=private_icl``): private in-context ensembles across sites.

Each site holds labelled fine-food reviews. Its teachers are a language model prompted with
disjoint sets of ``experts.shots`` of its own reviews (PromptPATE, Duan et al. 2023), built and
run inside the site's ClientApp; only vote histograms leave the site, each batch reserved and
settled in its ledger (the PATE protocol of ``fedens.federation.votes``). The coordinator
releases labels with GNMax or Confident-GNMax and uses them twice: (a) per-query answers on the
test queries (DP-ICL; a query the mechanism does not answer gets the public zero-shot answer),
and (b) a student that answers every later query at no further privacy cost: a public prompt
whose examples are released public items (PromptPATE), or a TF-IDF logistic regression trained on
the pool's released labels (``combiner.student``; both are reported).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from fedens.config_schema import Rule, Schema, checked, integer, is_num, one_of, positive
from fedens.data import PARTITIONS
from fedens.experts.prompted_teachers import CALIBRATIONS
from fedens.federation import layout as L
from fedens.federation.votes.coordinator import make_pate_server_app, text_pool_file
from fedens.federation.votes.sites import make_pate_client_app
from fedens.files import cache_root, npz_bytes, write_atomic
from fedens.runs import Pipeline, RunContext, federation_failure, register_pipeline
from fedens.runs.backends import FlowerApps, federate
from fedens.runs.console import console, fmt
from fedens.runs.intervals import accuracy_interval
from fedens.runs.results import epsilon_max, site_ledger_summaries

COLUMN = "review"
LABELS = ("great", "other")  # class i is LABELS[i]

# Published numbers, for comparison only (not measured here).
ANCHORS = {"promptpate_sst2": {"student_accuracy": 0.927, "epsilon": 0.147, "non_private_accuracy": 0.952,
                               "source": "Duan et al. 2023, Flocks of Stochastic Parrots (PromptPATE), "
                                         "GPT-3 Babbage on SST-2"}}


#: columns of the reviews a partition by column can read (every review is of its own product)
PARTITION_COLUMNS = ("product",)


def _model_problem(model_path: Any) -> str:
    """What keeps the teachers' model from loading here ("" if nothing)."""
    from fedens.experts.language_model import model_file

    try:
        path = model_file(model_path)
    except (ImportError, ValueError) as error:
        return str(error)
    return "" if path.exists() else f"no such file or folder: {path}"


def _train_fits(v: Any, cfg: DictConfig) -> bool:
    return v is None or (isinstance(v, int) and v >= cfg.data.pool_size + cfg.federation.num_sites)


PRIVATE_ICL_SCHEMA = Schema([
    integer("federation.num_sites"),
    integer("federation.min_sites", 1, "federation.num_sites"),
    positive("federation.round_timeout", "a number of seconds > 0"),
    integer("federation.num_cpus", 1, note="Ray's CPUs in simulation"),
    Rule("privacy.delta", lambda v, cfg: is_num(v) and 0 < v < 1, "a number in (0, 1)"),
    positive("privacy.budget", "a finite number > 0"),
    one_of("privacy.mechanism", ("confident_gnmax", "gnmax"), show=lambda o: "'confident_gnmax' or 'gnmax'"),
    positive("privacy.sigma1"), positive("privacy.sigma2"), positive("privacy.threshold"),
    Rule("privacy.epsilon", lambda v, cfg: v is None or (is_num(v) and 0 < v <= cfg.privacy.budget
                                                        and cfg.privacy.mechanism == "gnmax"),
         lambda cfg: f"null (use sigma2) or a number in (0, privacy.budget={cfg.privacy.budget:g}], with "
                     "privacy.mechanism=gnmax (Confident-GNMax's cost depends on the votes)"),
    integer("privacy.query_batch"),
    one_of("partition.column", PARTITION_COLUMNS, show=lambda o: f"one of the reviews' columns {list(o)}",
           when=lambda cfg: cfg.partition.name in PARTITIONS.by_column),
    integer("data.pool_size"), integer("data.test_size", 1, 1000, note="of the 1,000 test reviews"),
    Rule("data.train_size", _train_fits, lambda cfg: "null (all 4,000) or an integer >= pool_size + "
         f"num_sites ({cfg.data.pool_size + cfg.federation.num_sites})"),
    integer("experts.shots"), integer("experts.teachers_per_site"),
    one_of("experts.calibrate", CALIBRATIONS, show=lambda o: f"one of {list(o)}"),
    integer("experts.calibration_size", 1, "data.pool_size", note="of the public queries"),
    Rule("experts.prior", lambda v, cfg: v is None or (sorted(v) == sorted(LABELS) and all(
        is_num(p) and p > 0 for p in v.values()) and abs(sum(v.values()) - 1) < 1e-6),
         f"null (uniform) or a share > 0 for each of {list(LABELS)}, summing to 1"),
    Rule("experts.answers", lambda v, cfg: sorted(v) == sorted(LABELS) and len(set(v.values())) == 2,
         f"one distinct answer word for each of {list(LABELS)}"),
    integer("experts.batch_size"),
    checked("experts.model_path", lambda cfg: _model_problem(cfg.experts.model_path),
            "a GGUF file, a transformers folder or an offline model's name"),
    positive("combiner.C", "a number > 0 (the classifier student's inverse regularisation)"),
    one_of("combiner.student", ("prompt", "classifier"), show=lambda o: "'prompt' or 'classifier'"),
])


def _mechanism_params(cfg: DictConfig) -> dict[str, float]:
    p = cfg.privacy
    if p.mechanism == "gnmax":
        if p.epsilon is not None:
            queries = cfg.data.test_size + cfg.data.pool_size
            return {"sigma": _sigma_for(float(p.epsilon), float(p.delta), queries)}
        return {"sigma": float(p.sigma2)}
    return {"threshold": float(p.threshold), "sigma1": float(p.sigma1), "sigma2": float(p.sigma2)}


@functools.cache
def _sigma_for(epsilon: float, delta: float, num_queries: int) -> float:
    """The least GNMax noise whose answers to all the run's queries stay within ``epsilon`` per
    site at ``delta`` (dp-accounting's RDP accountant, as the ledgers count)."""
    from fedens.privacy.mechanisms import GNMax

    return float(GNMax.with_epsilon(epsilon, delta, num_queries).sigma)


def _lm(cfg: DictConfig) -> Any:
    from fedens.experts import CausalLMExpert

    return CausalLMExpert(model_path=cfg.experts.model_path, name="teacher-lm",
                          batch_size=cfg.experts.batch_size)


def _prompt(cfg: DictConfig, data: dict[str, Any]) -> dict[str, Any]:
    """The teachers' prompt settings, as the sites get them; calibration texts are public queries."""
    e = cfg.experts
    prior = None if e.prior is None else [float(e.prior[label]) for label in LABELS]
    return {"column": COLUMN, "shots": int(e.shots), "answers": [str(e.answers[label]) for label in LABELS],
            "max_chars": e.max_chars, "calibrate": str(e.calibrate), "prior": prior,
            "calibration_texts": [str(t) for t in data["pool"][: e.calibration_size]]
            if e.calibrate == "prior" else []}


def _classes(scores: Any) -> np.ndarray:
    return np.array([LABELS.index(s) for s in scores])


def prepare(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """The reviews split into the public pool, the sites' labelled records and the test queries;
    the sites' files and the coordinator's query pool (test queries first)."""
    from fedens.data.fine_foods import fine_food_reviews

    train, test = fine_food_reviews()
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(train))[: cfg.data.train_size or len(train)]
    pool, private = train.iloc[order[: cfg.data.pool_size]], train.iloc[order[cfg.data.pool_size:]]
    test = test.iloc[: cfg.data.test_size]
    y_private = _classes(private["score"])
    params = {k: v for k, v in OmegaConf.to_container(cfg.partition).items() if k != "name"}
    groups = private[params["column"]].to_numpy() if cfg.partition.name in PARTITIONS.by_column else None
    sites = PARTITIONS.split(cfg.partition.name, y_private, cfg.federation.num_sites, cfg.seed, groups=groups,
                             **params)
    for site, records in enumerate(sites):
        L.site_dir(run_dir, site).mkdir(parents=True, exist_ok=True)  # in simulation, the site's own disk
        write_atomic(L.site_dir(run_dir, site) / "data.npz", npz_bytes(
            X=np.zeros((len(records), 0), np.float32), y=y_private[records],
            **{f"text.{COLUMN}": np.asarray(private[COLUMN].to_numpy()[records], dtype=str)}))
    L.coordinator_test_path(run_dir).parent.mkdir(parents=True, exist_ok=True)
    queries = np.concatenate([test[COLUMN].to_numpy(), pool[COLUMN].to_numpy()])
    text_pool_file(run_dir / "coordinator" / "pool.npz", queries)
    teachers = [min(int(cfg.experts.teachers_per_site), len(r) // int(cfg.experts.shots)) for r in sites]
    return {"pool": pool[COLUMN].to_numpy(), "pool_labels": _classes(pool["score"]),
            "test": test[COLUMN].to_numpy(), "test_labels": _classes(test["score"]), "sites": sites,
            "private": private, "y_private": y_private, "teachers": teachers}


def federation_settings(cfg: DictConfig, run_dir: Path, data: dict[str, Any]) -> dict[str, Any]:
    return {
        L.RUN_DIR: str(run_dir), L.SEED: cfg.seed, L.DELTA: float(cfg.privacy.delta),
        L.TASK_SCHEMA: json.dumps({"num_features": 0, "num_classes": len(LABELS)}),
        L.BUDGET_EPSILON: float(cfg.privacy.budget), L.MIN_SITES: cfg.federation.min_sites,
        L.ROUND_TIMEOUT: float(cfg.federation.round_timeout),
        L.TEACHER_TIMEOUT: float(cfg.federation.round_timeout),
        L.TEACHERS_PER_SITE: json.dumps(data["teachers"]), L.TEACHER_KIND: "prompted_lm",
        L.TEACHER_LM: json.dumps(_lm(cfg).to_record()), L.TEACHER_PROMPT: json.dumps(_prompt(cfg, data)),
        L.POOL_PATH: str(run_dir / "coordinator" / "pool.npz"),
        L.NUM_QUERIES: len(data["test"]) + len(data["pool"]), L.QUERY_BATCH: cfg.privacy.query_batch,
        L.MECHANISM: cfg.privacy.mechanism, L.MECHANISM_PARAMS: json.dumps(_mechanism_params(cfg)),
        L.SMOOTH_SENSITIVITY: "", L.MIN_REPLIES: 1,
        L.TEACHER_CACHE_DIR: str(Path(cfg.experts.cache_dir).resolve()) if cfg.experts.cache_dir else "",
    }


def _scores(predicted: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Any]:
    """Accuracy with its bootstrap interval, and balanced accuracy (mean per-class recall)."""
    correct = predicted == y
    recalls = [float(correct[y == c].mean()) for c in np.unique(y)]
    return {"accuracy": float(correct.mean()), "interval": list(accuracy_interval(correct, seed)),
            "balanced_accuracy": float(np.mean(recalls))}


def _zero_shot(cfg: DictConfig, data: dict[str, Any]) -> np.ndarray:
    """The coordinator's public answer: the model with no example, content-free calibrated."""
    from fedens.experts.prompted_teachers import PromptedTeachers

    lm = _lm(cfg)
    lm.cache_path = cache_root() / "lm-scores.sqlite"  # public queries only: the user's cache
    zero = PromptedTeachers.from_prompt(lm, [[]], _prompt(cfg, data))
    return zero.proba(0, list(data["test"])).argmax(axis=1)


def _teacher_answers(cfg: DictConfig, settings: dict[str, Any], data: dict[str, Any]) -> np.ndarray:
    """Every teacher's answer on the test queries, (teachers, n): the non-private references.
    Simulation only: the sites' teachers rebuilt from the records the coordinator wrote, their
    scores read from each site's own cache (the federation computed them)."""
    from fedens.experts.prompted_teachers import PromptedTeachers, teacher_examples
    from fedens.federation.votes.sites import lm_cache_path, teacher_seed

    answers = []
    texts = data["private"][COLUMN].to_numpy()
    for site, records in enumerate(data["sites"]):
        lm = _lm(cfg)
        lm.cache_path = lm_cache_path(settings, L.site_dir(settings[L.RUN_DIR], site), site)
        examples = teacher_examples(texts[records], data["y_private"][records], data["teachers"][site],
                                    int(cfg.experts.shots), teacher_seed(cfg.seed, site))
        teachers = PromptedTeachers.from_prompt(lm, examples, _prompt(cfg, data))
        answers += [teachers.proba(t, list(data["test"])).argmax(axis=1)
                    for t in range(teachers.num_teachers)]
    return np.array(answers)


def _prompt_student(cfg: DictConfig, data: dict[str, Any], pool: np.ndarray,
                    labels: np.ndarray) -> np.ndarray | None:
    """The public prompt (PromptPATE's student): the model prompted with ``experts.shots`` released
    public items, as balanced over the released labels as they allow, in pool order."""
    from fedens.experts.prompted_teachers import PromptedTeachers

    picked: list[int] = []
    for c in range(len(LABELS)):  # half from each label while both last
        picked += np.flatnonzero(labels == c)[: int(cfg.experts.shots) // len(LABELS)].tolist()
    if len(set(labels[picked].tolist())) < 2:
        return None
    order = sorted(picked)  # pool order, the labels interleaved as they come
    lm = _lm(cfg)
    lm.cache_path = cache_root() / "lm-scores.sqlite"  # public items only
    student = PromptedTeachers.from_prompt(lm, [[(str(pool[i]), int(labels[i])) for i in order]],
                                           _prompt(cfg, data))
    return student.proba(0, list(data["test"])).argmax(axis=1)


def _classifier_student(cfg: DictConfig, pool: np.ndarray, labels: np.ndarray,
                        test: np.ndarray) -> np.ndarray | None:
    """A small public classifier: TF-IDF and a logistic regression on the released labels."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    if len(np.unique(labels)) < 2:
        return None
    model = make_pipeline(TfidfVectorizer(sublinear_tf=True, min_df=2), LogisticRegression(C=cfg.combiner.C))
    return model.fit(list(pool), labels).predict(list(test))


def run_private_icl(cfg: DictConfig, run: RunContext) -> dict[str, Any]:
    run_dir = run.run_dir
    data = prepare(cfg, run_dir)
    n_test, seed = len(data["test"]), cfg.seed
    console.print(f"data  fine-food reviews: {len(data['y_private'])} labelled at "
                  f"{cfg.federation.num_sites} sites ({PARTITIONS.describe(cfg.partition)}; teachers per "
                  f"site {data['teachers']}, {cfg.experts.shots} examples each), {len(data['pool'])} public "
                  f"queries, {n_test} test queries")
    settings = federation_settings(cfg, run_dir, data)
    console.print(f"federation  Flower simulation: {sum(data['teachers'])} prompted teachers, "
                  f"{settings[L.NUM_QUERIES]} queries, {cfg.privacy.mechanism} {_mechanism_params(cfg)}")
    federate(cfg, settings, FlowerApps(make_pate_server_app, make_pate_client_app), console.print,
             console.print)
    out = L.federation_dir(run_dir)
    if not (out / "pate.json").is_file():
        raise federation_failure(run_dir, "federation/pate.json")
    outcome = json.loads((out / "pate.json").read_text())
    with np.load(out / "released_labels.npz") as released:
        labels, answered = released["labels"], released["answered"].astype(bool)
    y_test = data["test_labels"]
    console.print(f"baselines  zero-shot on {n_test} test queries, and each teacher (its cached scores)")
    zero = _zero_shot(cfg, data)
    dp_test = np.where(answered[:n_test], labels[:n_test], zero)  # abstained: the public answer
    on_pool = answered[n_test:]
    pool, released = data["pool"][on_pool], labels[n_test:][on_pool]
    console.print(f"students  on {len(released)} released public labels: a public {cfg.experts.shots}-shot "
                  "prompt and a TF-IDF classifier")
    coin = np.random.default_rng([seed, 17]).integers(0, len(LABELS), len(data["pool"]))
    without_sites = _prompt_student(cfg, data, data["pool"], coin)  # the same prompt, labels by a coin
    students = {"prompt": _prompt_student(cfg, data, pool, released),
                "classifier": _classifier_student(cfg, pool, released, data["test"])}
    scored = {k: None if v is None else _scores(v, y_test, seed) for k, v in students.items()}
    student = scored[cfg.combiner.student]
    teachers = _teacher_answers(cfg, settings, data)
    vote = np.array([np.bincount(col, minlength=len(LABELS)).argmax() for col in teachers.T])
    teacher_acc = [float((t == y_test).mean()) for t in teachers]
    dp = _scores(dp_test, y_test, seed)
    per_site = site_ledger_summaries(run_dir, cfg.federation.num_sites, cfg.privacy.budget)
    majority = int(np.bincount(data["y_private"]).argmax())  # what the labelled records say, not the test
    return {
        "data": {"name": "fine_food_reviews", "num_sites": cfg.federation.num_sites, "num_classes": 2,
                 "labels": list(LABELS), "partition": PARTITIONS.describe(cfg.partition),
                 "site_sizes": [len(r) for r in data["sites"]], "teachers_per_site": data["teachers"],
                 "shots": int(cfg.experts.shots), "calibrate": str(cfg.experts.calibrate),
                 "prior": None if cfg.experts.prior is None else dict(cfg.experts.prior),
                 "public_queries": len(data["pool"]),
                 "test_queries": n_test},
        "metrics": {"test_accuracy": dp["accuracy"], "test_accuracy_interval": dp["interval"],
                    "balanced_accuracy": dp["balanced_accuracy"],
                    "test_answered": int(answered[:n_test].sum()),
                    "answered_accuracy": float((labels[:n_test] == y_test)[answered[:n_test]].mean())
                    if answered[:n_test].any() else None,
                    "student_accuracy": None if student is None else student["accuracy"],
                    "student_balanced_accuracy": None if student is None else student["balanced_accuracy"],
                    "student_labels": int(on_pool.sum()), "student": cfg.combiner.student,
                    **{f"{k}_student_accuracy": None if v is None else v["accuracy"]
                       for k, v in scored.items()},
                    "pool_label_accuracy": float((labels[n_test:] == data["pool_labels"])[on_pool].mean())
                    if on_pool.any() else None},
        "baselines": {"chance_accuracy": 1 / len(LABELS),
                      "majority_class_accuracy": float((y_test == majority).mean()),
                      "zero_shot_accuracy": _scores(zero, y_test, seed)["accuracy"],
                      "zero_shot_balanced_accuracy": _scores(zero, y_test, seed)["balanced_accuracy"],
                      "mean_teacher_accuracy": float(np.mean(teacher_acc)),
                      "best_teacher_accuracy": float(np.max(teacher_acc)),
                      "nonprivate_vote_accuracy": _scores(vote, y_test, seed)["accuracy"],
                      # the prompt student without the sites: its examples labelled by a coin flip
                      "public_prompt_random_labels_accuracy": None if without_sites is None
                      else _scores(without_sites, y_test, seed)["accuracy"],
                      "note": "the teachers and the non-private vote are references only simulation can "
                              "compute (the coordinator rebuilt them from the records it wrote)"},
        "anchors": ANCHORS,
        "cost": {"num_experts": outcome["teachers"], "expert_calls_per_query": float(outcome["teachers"]),
                 "lm_calls_per_answered_query": float(outcome["teachers"])},
        "privacy": {"delta": float(cfg.privacy.delta), "epsilon_max": epsilon_max(per_site),
                    "epsilon_worst_case_max": epsilon_max(per_site, "epsilon_worst_case"),
                    "per_site": per_site,
                    "queries_answered": outcome["answered"], "queries_refused": outcome["refused"],
                    "accounting": "rdp-data-independent",
                    "conversion": "dp-accounting's RDP -> (epsilon, delta), tighter than the classic one "
                                  "in Papernot et al. 2018",
                    "mechanism": f"{cfg.privacy.mechanism} {_mechanism_params(cfg)}, every site charged",
                    "data_dependent": outcome["analysis"] or {"label": "not computed: Confident-GNMax only"}},
        "timing": {"federation_s": outcome["seconds"]},
    }


def print_table(results: dict[str, Any]) -> None:
    m, b, p = results["metrics"], results["baselines"], results["privacy"]
    table = Table(title="fedens private_icl (fine-food reviews)",
                  caption=f"ε at δ={p['delta']:g}, per site, data-independent (the ledgers)")
    table.add_column("")
    table.add_column("accuracy", justify="right")
    table.add_column("balanced", justify="right")
    table.add_row(f"DP answers (ε {fmt(p['epsilon_max'], '.2f')}, {m['test_answered']} answered)",
                  fmt(m["test_accuracy"]), fmt(m["balanced_accuracy"]))
    table.add_row(f"{m['student']} student on {m['student_labels']} DP labels", fmt(m["student_accuracy"]),
                  fmt(m["student_balanced_accuracy"]))
    table.add_row("zero-shot", fmt(b["zero_shot_accuracy"]), fmt(b["zero_shot_balanced_accuracy"]))
    table.add_row("mean / best teacher",
                  f"{fmt(b['mean_teacher_accuracy'])} / {fmt(b['best_teacher_accuracy'])}", "")
    table.add_row("non-private vote", fmt(b["nonprivate_vote_accuracy"]), "")
    table.add_row("majority class", fmt(b["majority_class_accuracy"]), "0.500")
    console.print(table)


@register_pipeline
class PrivateICLPipeline(Pipeline):
    """Private in-context ensembles: prompted LM teachers at the sites, GNMax labels, a student."""

    name = "private_icl"
    groups = {"data": ("fine_foods",), "partition": tuple(PARTITIONS), "experts": ("prompted_lm",),
              "combiner": ("text_student",), "privacy": ("icl_gnmax",), "federation": ("simulation",)}
    schema = PRIVATE_ICL_SCHEMA

    def run(self, cfg: DictConfig, run: RunContext) -> dict[str, Any]:
        return run_private_icl(cfg, run)

    def print_report(self, results: dict[str, Any], cfg: DictConfig) -> None:
        print_table(results)
