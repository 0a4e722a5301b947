"""A tiny language model for tests: a local transformers folder that loads and scores in
milliseconds, as a site would hold a model."""

from __future__ import annotations

WORDS = ("tasty fresh lovely crisp delicious perfect stale bland soggy broken awful late the box came with a "
         "snack for my kids and it was Review : Verdict Sentiment Question Answer good bad positive negative "
         "N/A . ,").split()


def tiny_lm(folder, words=WORDS):
    """A one-layer Llama with random weights and a word-level tokenizer: a local transformers
    folder, as a site would hold a model (fast; what it says is not the point here)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<s>", *sorted(set(words))])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                         pad_token_id=1, bos_token_id=2))
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return str(folder)
