"""A causal language model scoring multiple-choice options by log-likelihood."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from fedens.experts.lm_cache import ScoreCache, entry_key
from fedens.experts.lm_scoring import SCORERS
from fedens.experts.multiple_choice import MultipleChoiceQuestion, as_questions
from fedens.experts.offline_models import DEFAULT_MODEL, OFFLINE_MODELS, cached_sha256, offline_model_path
from fedens.experts.registry import register_expert
from fedens.experts.validation import check_cost, check_int, check_probabilities
from fedens.files import cache_root

#: the prompt format's version: part of every cached score's key (change it with encode())
PROMPT_VERSION = 1
#: the prompts around a question's text (without chat template); each option follows after a space
PROMPT_FORMATS = {"question_answer": "Question: {text}\nAnswer:", "raw": "{text}"}


def model_file(model_path: str | Path | None, gguf_file: str | None = None) -> Path:
    """The file or folder a model is read from: ``model_path`` a path, or the name of one of
    :data:`OFFLINE_MODELS` (None: SmolLM2-135M-Instruct), ``gguf_file`` a file inside it."""
    if model_path is None or str(model_path) in OFFLINE_MODELS:
        return offline_model_path(DEFAULT_MODEL if model_path is None else str(model_path))
    path = Path(model_path)
    return path / gguf_file if gguf_file is not None else path


def _transformers() -> Any:
    """transformers, or ImportError saying which extra installs it."""
    try:
        import transformers
    except ImportError:
        raise ImportError("language-model experts need transformers: pip install 'fedens[llm]'") from None
    return transformers


def dequantized_folder(gguf: Path) -> Path:
    """Where a GGUF model is kept dequantised (float32 safetensors, its config and tokenizer), in
    :func:`cache_root`, named by the file's sha256 and the transformers version that converted it.
    transformers' GGUF reader parses the file's metadata in Python (18 s for SmolLM2-135M on this
    machine); the folder loads in about 2 s."""
    transformers = _transformers()
    return cache_root() / "models" / f"{cached_sha256(gguf)[:24]}-transformers-{transformers.__version__}"


def _save_dequantized(model: Any, tokenizer: Any, folder: Path) -> None:
    """Write ``folder`` whole or not at all (a temporary folder renamed into place)."""
    from safetensors.torch import save_model

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # the weights are plain float32 now
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        save_model(model, str(tmp / "model.safetensors"))  # tied weights stored once
        tokenizer.save_pretrained(str(tmp))
        tmp.rename(folder)
    except OSError:
        if folder.is_dir():  # another process made it meanwhile: theirs is the same
            shutil.rmtree(tmp, ignore_errors=True)
            return
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_causal_lm(model_path: str | Path, gguf_file: str | None = None) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a local folder or GGUF file, never from a hub.

    ``model_path`` is a folder in transformers' layout or a ``.gguf`` file, dequantised to
    float32 by transformers (which needs the ``gguf`` package) the first time and then read
    from :func:`dequantized_folder`.
    """
    # No hub access: local_files_only guarantees it; the variable covers a first import of the hub client.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = _transformers()
    transformers.utils.logging.disable_progress_bar()  # a bar per load: noise in a run's output
    AutoModelForCausalLM, AutoTokenizer = transformers.AutoModelForCausalLM, transformers.AutoTokenizer

    path = Path(model_path)
    if gguf_file is not None:
        path = path / gguf_file
    if path.suffix != ".gguf":
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
        return model.eval(), tokenizer
    folder = dequantized_folder(path)
    if not (folder / "model.safetensors").is_file():
        options = {"local_files_only": True, "gguf_file": path.name}
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **options)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), **options)
        try:
            _save_dequantized(model, tokenizer, folder)
        except OSError as error:  # a read-only or full cache: this load works, later ones convert again
            warnings.warn(f"fedens: cannot keep the dequantised model in {folder.parent} ({error}); set "
                          "FEDENS_CACHE to a writable folder to load it faster next time", stacklevel=2)
            return model.eval(), tokenizer
    return load_causal_lm(folder)


@register_expert("causal_lm")
@dataclass(eq=False)
class CausalLMExpert:
    """A causal LM as an expert on multiple-choice questions: a distribution over options.

    Each option's text is scored as the continuation of a prompt built from the
    question; its log-likelihood is the sum of its tokens' log-probabilities
    under the model. The distribution is the softmax over options of

    - ``normalisation="sum"`` (default): the summed log-likelihood, i.e. the
      model's probability of each option's text, renormalised over the options;
    - ``normalisation="mean"``: the mean log-probability per option token, so
      long options are not penalised for their length (the per-token analogue
      of lm-eval's ``acc_norm``).

    The default prompt (``prompt_format="question_answer"``) is the cloze form
    ``"Question: ...\nAnswer:"`` followed by ``" " + option`` (``"raw"``: the question's text is
    the whole prompt), without the lettered options: on hand-written easy
    questions SmolLM2-135M-Instruct scored 17/24 with it (either
    normalisation) but 7/24, chance level, with the options listed in a chat
    turn. ``chat_template=True`` puts the question (``list_options=True``: and
    its lettered options) in a user turn and scores the option as the
    assistant's reply, for larger instruct models. ``model_path`` is a GGUF file, a
    transformers folder or the name of an offline model
    (:data:`~fedens.experts.offline_models.OFFLINE_MODELS`: ``smollm2-135m-instruct``, the
    default, or ``gemma-3-270m``). The model loads on
    first use; pickling keeps the path, not the weights.

    ``scoring="shared_prefix"`` (default) encodes each prompt once and reuses its key/value
    cache for every option, ``batch_size`` questions per forward pass;
    ``"per_option"`` re-encodes the prompt with each option, ``batch_size`` sequences per pass
    (the reference; :mod:`fedens.experts.lm_scoring`). ``cache_path``: a SQLite file keeping
    every question's option log-likelihoods, keyed by the model file's sha256, the prompt
    settings and the question (:mod:`fedens.experts.lm_cache`); ``scored`` and ``cached``
    count the questions the model answered and those read from it.

    Examples
    --------
    >>> e = CausalLMExpert(name="smollm2")  # doctest: +SKIP
    >>> e.predict_proba([MultipleChoiceQuestion("What is 2 + 2?", ["4", "7"])])  # doctest: +SKIP
    array([[0.9..., 0.0...]])
    """

    model_path: str | Path | None = None
    gguf_file: str | None = None
    name: str = "causal-lm"
    normalisation: Literal["sum", "mean"] = "sum"
    chat_template: bool = False
    list_options: bool = False
    system_prompt: str | None = None
    prompt_format: Literal["question_answer", "raw"] = "question_answer"
    batch_size: int = 16
    scoring: Literal["shared_prefix", "per_option"] = "shared_prefix"
    cache_path: str | Path | None = None
    cost: float = 1.0
    site: str | None = None
    model: Any = field(default=None, repr=False)
    tokenizer: Any = field(default=None, repr=False)
    scored: int = field(default=0, init=False)
    cached: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.normalisation not in ("sum", "mean"):
            raise ValueError(
                f"expert {self.name!r}: normalisation must be 'sum' or 'mean', got {self.normalisation!r}"
            )
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"expert {self.name!r}: prompt_format must be one of {list(PROMPT_FORMATS)}, "
                             f"got {self.prompt_format!r}")
        self.batch_size = check_int(self.batch_size, "batch_size", self.name)
        if self.scoring not in SCORERS:
            raise ValueError(f"expert {self.name!r}: scoring must be one of {sorted(SCORERS)}, "
                             f"got {self.scoring!r}")
        if (self.model is None) != (self.tokenizer is None):
            raise ValueError(f"expert {self.name!r}: pass both model and tokenizer, or neither")
        self.cost = check_cost(self.cost, self.name)
        self._loaded_from_path = False
        self._weights_id: str | None = None

    def load(self) -> CausalLMExpert:
        """Load the model and tokenizer now, if not loaded yet (else done on first use)."""
        if self.model is None:
            self.model, self.tokenizer = load_causal_lm(model_file(self.model_path, self.gguf_file))
            self._loaded_from_path = True
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self._loaded_from_path:  # pickle the path, not the weights: reloaded on first use
            state.update(model=None, tokenizer=None, _loaded_from_path=False)
        return state

    def encode(self, question: MultipleChoiceQuestion) -> tuple[list[int], list[list[int]]]:
        """Token ids of the prompt and of each option's continuation."""
        self.load()
        tok = self.tokenizer
        text = question.prompt() if self.list_options else question.question.strip()
        if self.chat_template:
            messages = [{"role": "user", "content": text}]
            if self.system_prompt is not None:
                messages.insert(0, {"role": "system", "content": self.system_prompt})
            context = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            continuations = list(question.options)
        else:
            context = PROMPT_FORMATS[self.prompt_format].format(text=text)
            continuations = [f" {option}" for option in question.options]
        ctx_ids = tok(context, add_special_tokens=not self.chat_template).input_ids
        return ctx_ids, [tok(c, add_special_tokens=False).input_ids for c in continuations]

    def model_id(self) -> str:
        """The sha256 of the model: of its file (a GGUF file, or a folder's weights and tokenizer)
        when it was loaded from ``model_path``, else of the weights and vocabulary passed in."""
        if self.model is not None and not self._loaded_from_path:
            if self._weights_id is None:
                digest = hashlib.sha256(json.dumps(self.tokenizer.get_vocab(), sort_keys=True).encode())
                for name, tensor in sorted(self.model.state_dict().items()):
                    digest.update(name.encode())
                    digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
                self._weights_id = digest.hexdigest()
            return self._weights_id
        path = model_file(self.model_path, self.gguf_file)
        if path.is_file():
            return cached_sha256(path)
        files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json", ".model"))
        return hashlib.sha256("".join(f"{p.name}:{cached_sha256(p)}" for p in files).encode()).hexdigest()

    def to_record(self) -> dict[str, Any]:
        """What the experts file holds: where the model is and its sha256 (a site loads its own
        copy, which must match), and the prompt and scoring settings; never the weights."""
        if self.model is not None and not self._loaded_from_path:
            raise TypeError(f"expert {self.name!r} was given a model object, which has no code-free record: "
                            "give it model_path (a GGUF file or a transformers folder) to ship it")
        return {"name": self.name, "cost": float(self.cost), "site": self.site,
                "model_path": None if self.model_path is None else str(self.model_path),
                "gguf_file": self.gguf_file, "model_sha256": self.model_id(),
                "normalisation": self.normalisation, "chat_template": self.chat_template,
                "list_options": self.list_options, "system_prompt": self.system_prompt,
                "prompt_format": self.prompt_format, "batch_size": int(self.batch_size),
                "scoring": self.scoring}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> CausalLMExpert:
        """The expert a record names, on this machine's copy of its model (ValueError when the copy
        differs from the coordinator's: another file, another version)."""
        record = dict(record)
        expected = record.pop("model_sha256")
        expert = cls(**record)
        where = record["model_path"] or DEFAULT_MODEL
        try:
            found = expert.model_id()
        except (OSError, ImportError) as error:
            raise ValueError(f"expert {expert.name!r} needs its model at {where} (sha256 {expected[:16]}), "
                             f"which this machine cannot read ({error})") from None
        if found != expected:
            raise ValueError(f"expert {expert.name!r}: the model at {where} has sha256 {found[:16]}..., the "
                             f"coordinator's {expected[:16]}...: install the same model file")
        return expert

    def template(self) -> dict[str, Any]:
        """Everything besides the model and the question that the prompt's tokens depend on."""
        return {"version": PROMPT_VERSION, "chat_template": self.chat_template,
                "list_options": self.list_options, "system_prompt": self.system_prompt,
                "prompt_format": self.prompt_format}

    def option_log_likelihoods(self, X: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Summed log-likelihood of every option and its token count, both of shape (n, C)."""
        questions = as_questions(X, self.name)
        self.load()
        encoded = [self.encode(q) for q in questions]
        lengths = np.array([[len(c) for c in options] for _, options in encoded], dtype=np.int64)
        loglik = np.zeros(lengths.shape)
        keys = found = store = None
        if self.cache_path is not None:
            model, template = self.model_id(), self.template()
            keys = [entry_key(model, template, q.question, q.options) for q in questions]
            store = ScoreCache(self.cache_path)
            found = store.get(keys)
        todo = [i for i in range(len(questions)) if not found or keys[i] not in found]
        if todo:
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            loglik[todo] = SCORERS[self.scoring](self.model, pad, [encoded[i] for i in todo], self.batch_size)
        if keys is not None:
            for i in set(range(len(questions))) - set(todo):
                loglik[i] = found[keys[i]]
            if todo:
                store.put({keys[i]: loglik[i] for i in todo})
        self.scored += len(todo)
        self.cached += len(questions) - len(todo)
        return loglik, lengths

    def predict_proba(self, X: Sequence[Any]) -> np.ndarray:
        loglik, lengths = self.option_log_likelihoods(X)
        scores = loglik / lengths if self.normalisation == "mean" else loglik
        scores = scores - scores.max(axis=1, keepdims=True)
        P = np.exp(scores)
        return check_probabilities(P / P.sum(axis=1, keepdims=True), self.name, len(loglik))
