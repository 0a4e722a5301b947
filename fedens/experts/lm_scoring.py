"""A causal LM's log-likelihood of each option's tokens after a prompt, computed two ways.

``per_option``: every (prompt, option) pair is one sequence, the prompt re-encoded for each
option; the reference. ``shared_prefix``: the start all prompts share (few-shot demonstrations)
is encoded once; each prompt's remainder once, a batch of prompts together, on that start's
key/value cache; and that cache is reused by all of its options. An option's first token is read
from the prompt's own next-token logits, so questions whose options are single tokens
("A"/"B", "great"/"other") cost one forward pass per batch. Both return the same numbers to
float32 round-off. Written by hand: transformers scores one sequence at a time.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

#: one question: the prompt's token ids and each option's continuation ids
Encoded = tuple[list[int], list[list[int]]]


def _left_padded(sequences: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask with every sequence ending at the last position."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for b, s in enumerate(sequences):
        ids[b, width - len(s):] = torch.tensor(s)
        mask[b, width - len(s):] = 1
    return ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 at each sequence's first real token (left padding)."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


def per_option(model: Any, pad: int, items: Sequence[Encoded], batch_size: int) -> np.ndarray:
    """Summed log-likelihood of every option, shape (n, C): prompt + option as one sequence each,
    ``batch_size`` sequences per forward pass."""
    pairs = [(i, j, ctx, cont) for i, (ctx, options) in enumerate(items) for j, cont in enumerate(options)]
    loglik = np.zeros((len(items), len(items[0][1])))
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        ids, mask = _left_padded([ctx + cont for _, _, ctx, cont in batch], pad)
        keep = max(len(cont) for *_, cont in batch) + 1  # only these positions predict option tokens
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask),
                           logits_to_keep=keep).logits
        for b, (i, j, _, cont) in enumerate(batch):
            # option token t is predicted by the logits one position before it
            rows = logits[b, keep - 1 - len(cont):keep - 1].double().log_softmax(dim=-1)
            loglik[i, j] = rows.gather(1, torch.tensor(cont).unsqueeze(1)).sum().item()
    return loglik


def _log_probs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under each row of ``logits`` (..., vocabulary), in float64: the token's logit
    less the row's log-sum-exp, computed in the logits' float32 rather than converting every row
    to float64 (with Gemma 3's 262,144-token vocabulary that conversion was most of the time)."""
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked.double() - torch.logsumexp(logits, dim=-1).double()


def common_prefix(sequences: Sequence[list[int]]) -> list[int]:
    """The longest run of tokens every sequence starts with, leaving each at least one token."""
    shortest = min(len(s) for s in sequences)
    length = 0
    while length < shortest - 1 and all(s[length] == sequences[0][length] for s in sequences):
        length += 1
    return list(sequences[0][:length])


#: a common start shorter than this is not encoded on its own (a pass costs more than it saves)
MIN_COMMON = 8


def sliding_window(model: Any) -> int | None:
    """The attention window of a model with sliding-window layers (Gemma 3: 512 tokens), else None."""
    config = model.config
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if not window or (layer_types is not None and "sliding_attention" not in layer_types):
        return None
    return int(window)


def shared_prefix(model: Any, pad: int, items: Sequence[Encoded], batch_size: int) -> np.ndarray:
    """Summed log-likelihood of every option, shape (n, C). The prompts' common start (shared
    demonstrations, a system prompt) is encoded once; then ``batch_size`` prompts' remainders per
    forward pass on its key/value cache; then, if any option has more than one token, one pass
    over all their options' tokens after the first, on the prompts' cache repeated per option. A model
    with sliding-window attention scores a batch that holds a sequence longer than its window one
    prompt at a time, since the pads between the common start and a shorter remainder would count
    in the window."""
    C = len(items[0][1])
    loglik = np.zeros((len(items), C))
    window = sliding_window(model) or np.inf
    longer = [len(ctx) + max(map(len, options)) > window for ctx, options in items]
    common = common_prefix([ctx for ctx, _ in items])
    shared = None
    if len(items) > 1 and len(common) >= MIN_COMMON:
        with torch.inference_mode():
            shared = model(input_ids=torch.tensor([common]), use_cache=True, logits_to_keep=1).cache
    start = 0
    while start < len(items):
        # a pad inside a sequence would take a place in a sliding window: a batch that holds a
        # sequence longer than the window is scored one prompt at a time, without pads
        step = 1 if any(longer[start:start + batch_size]) else batch_size
        first, start = start, start + step
        batch = items[first:start]
        ids, mask = _left_padded([ctx[len(common) if shared else 0:] for ctx, _ in batch], pad)
        cache = None
        if shared is not None:  # [common][pads][remainder]: the pads masked out, positions continue
            cache = copy.deepcopy(shared)
            cache.batch_repeat_interleave(len(batch))
            positions = len(common) + _positions(mask)
            mask = torch.cat([torch.ones((len(batch), len(common)), dtype=torch.long), mask], dim=1)
        else:
            positions = _positions(mask)
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                        use_cache=True, logits_to_keep=1)
        rows = [(b, j, cont) for b, (_, options) in enumerate(batch) for j, cont in enumerate(options)]
        firsts = torch.tensor([[cont[0] for cont in options] for _, options in batch])  # (B, C)
        loglik[first:start] = _log_probs(out.logits[:, -1:].expand(-1, C, -1), firsts).numpy()
        rest = max(len(cont) for *_, cont in rows) - 1
        if rest == 0:
            continue
        cache = out.cache
        cache.batch_repeat_interleave(C)  # row b * C + j: prompt b for its option j
        inputs = torch.full((len(rows), rest), pad, dtype=torch.long)
        tail = torch.zeros((len(rows), rest), dtype=torch.long)
        targets = torch.zeros((len(rows), rest), dtype=torch.long)  # option token t + 1 after token t
        for r, (_, _, cont) in enumerate(rows):  # right-padded: the causal mask keeps pads out
            inputs[r, :len(cont) - 1] = torch.tensor(cont[:-1])
            targets[r, :len(cont) - 1] = torch.tensor(cont[1:])
            tail[r, :len(cont) - 1] = 1
        prompt_mask = mask.repeat_interleave(C, dim=0)
        positions = prompt_mask.sum(dim=1, keepdim=True) + torch.arange(rest).unsqueeze(0)
        with torch.inference_mode():
            logits = model(input_ids=inputs, attention_mask=torch.cat([prompt_mask, tail], dim=1),
                           position_ids=positions, cache=cache).logits
            tail_loglik = (_log_probs(logits, targets) * tail).sum(dim=1)  # pads count 0
        for r, (b, j, _) in enumerate(rows):
            loglik[first + b, j] += tail_loglik[r].item()
    return loglik


SCORERS = {"shared_prefix": shared_prefix, "per_option": per_option}
