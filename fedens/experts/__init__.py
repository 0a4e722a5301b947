"""Experts: anything that maps inputs to a distribution over C classes or options.

Adapters, each found by its registry name from config (``make_expert(name, **kwargs)``):
``sklearn`` (:class:`SklearnExpert`), ``torch`` (:class:`TorchExpert`), ``onnx``
(:class:`OnnxExpert`), ``callable`` (:class:`CallableExpert`), ``causal_lm``
(:class:`CausalLMExpert`), ``openai_chat`` (:class:`OpenAIChatExpert`) and ``prompted``
(:class:`PromptedExpert`: either of the last two on a table's text). Your own experts:
:func:`load_expert_entry` (files: skops, ONNX, torch state dicts, pickles only if you trust them;
models by registry name or Hydra ``_target_``).
"""

from fedens.experts.base import (
    Expert,
    SklearnExpert,
    expert_outputs,
    experts_bytes,
    load_experts,
    save_experts,
)
from fedens.experts.callable_expert import CallableExpert
from fedens.experts.cost import count_macs, seconds_per_query, with_costs, with_mac_costs
from fedens.experts.language_model import CausalLMExpert, load_causal_lm
from fedens.experts.multiple_choice import MultipleChoiceQuestion, as_questions
from fedens.experts.network import EXPERT_FAMILIES, train_expert_network, train_generalist_expert
from fedens.experts.offline_models import OFFLINE_MODELS, offline_model_path, smollm2_gguf_path
from fedens.experts.onnx_expert import OnnxExpert
from fedens.experts.openai_endpoint import OpenAIChatExpert
from fedens.experts.prompted import PromptedExpert
from fedens.experts.registry import EXPERTS, make_expert, register_expert
from fedens.experts.torch_expert import TorchExpert
from fedens.experts.user_files import load_expert_entry, load_expert_file
from fedens.experts.validation import ROW_SUM_TOLERANCE, check_cost, check_probabilities

__all__ = [
    "Expert",
    "SklearnExpert",
    "expert_outputs",
    "load_expert_file",
    "load_expert_entry",
    "PromptedExpert",
    "load_experts",
    "experts_bytes",
    "save_experts",
    "EXPERT_FAMILIES",
    "train_expert_network",
    "train_generalist_expert",
    "count_macs",
    "seconds_per_query",
    "with_costs",
    "with_mac_costs",
    "EXPERTS",
    "register_expert",
    "make_expert",
    "TorchExpert",
    "OnnxExpert",
    "CallableExpert",
    "CausalLMExpert",
    "load_causal_lm",
    "smollm2_gguf_path",
    "OFFLINE_MODELS",
    "offline_model_path",
    "MultipleChoiceQuestion",
    "as_questions",
    "OpenAIChatExpert",
    "ROW_SUM_TOLERANCE",
    "check_cost",
    "check_probabilities",
]
