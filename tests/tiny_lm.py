"""A tiny language model for tests: a local transformers folder that loads and scores in
milliseconds, as a site would hold a model."""

from __future__ import annotations

WORDS = ("tasty fresh lovely crisp delicious perfect stale bland soggy broken awful late the box came with a "
         "snack for my kids and it was Review : Verdict Sentiment Question Answer good bad positive negative "
         "N/A . ,").split()


def tiny_lm(folder, words=WORDS, architecture="llama"):
    """A language model with random weights and a word-level tokenizer, saved as a local
    transformers folder, as a site would hold a model (fast; what it says is not the point here).
    ``architecture``: a one-layer Llama (SmolLM2's family) or a two-layer Gemma 3 whose first layer
    attends through a sliding window of 4 tokens (Gemma 3's, at 512 tokens), so scoring that reuses
    a key/value cache is checked across the window's edge."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<s>", *sorted(set(words))])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>")
    torch.manual_seed(0)
    shape = {"vocab_size": len(vocab), "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
             "num_key_value_heads": 1, "pad_token_id": 1, "bos_token_id": 2}
    if architecture == "llama":
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, **shape))
    elif architecture == "gemma3":
        layers = ["sliding_attention", "full_attention"]
        model = Gemma3ForCausalLM(Gemma3TextConfig(num_hidden_layers=2, head_dim=8, sliding_window=4,
                                                   layer_types=layers, **shape))
    else:
        raise ValueError(f"architecture must be 'llama' or 'gemma3', got {architecture!r}")
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return str(folder)
