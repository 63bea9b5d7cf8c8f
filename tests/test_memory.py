"""sftbench.core.memory: the 8 GiB cap, without a GPU (torch.cuda calls faked)."""

from __future__ import annotations


def test_memory_cap_is_the_same_when_applied_again_in_one_process(monkeypatch):
    """A second apply_memory_cap (next checkpoint of a sweep, eval after training in a search) must not count the
    process's own torch reservation as CUDA context: that once shrank the fast generator to a sliver of the cap."""
    import torch

    from sftbench.core.memory import GIB, apply_memory_cap

    state = {"reserved": 0}
    fracs = []
    monkeypatch.setattr(torch.cuda, "init", lambda: None)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: type("P", (), {"total_memory": 80 * GIB})())
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (80 * GIB - GIB // 2 - state["reserved"], 80 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d=None: state["reserved"])
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: fracs.append(f))
    apply_memory_cap(8.0, "cuda:0")
    state["reserved"] = 6 * GIB  # the first checkpoint's generator holds its KV cache
    apply_memory_cap(8.0, "cuda:0")
    assert fracs[0] == fracs[1] == (8.0 - 0.5) / 80
