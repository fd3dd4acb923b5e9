"""Poison policies: what the core drivers do about a poisoned pfn (named, opt-in), and the
building blocks a variant driver's own failure notification may use (hard_offline, split_in_place).

* ``upstream``     — the merged kernel behaviour (v6.19+): signals only, nothing unmapped.
* ``hard-offline`` — Peter Xu's FALLBACK design with Jiaqi Yan's hard-offline knob (a proposal):
  record the pfn, zap its page (the whole covering PUD/PMD goes), refault around the poison.
* ``split``        — HGM-like in-place split (what no kernel does for pfnmaps): the covering
  leaf becomes lower-level leaves so only the poisoned 4 KiB is unmapped.
"""
from __future__ import annotations

from .base import PoisonPolicy
from .hard_offline import HardOfflinePolicy, hard_offline
from .split import SplitPolicy, split_in_place
from .upstream import UpstreamPolicy

POLICY_CLASSES: dict[str, type[PoisonPolicy]] = {
    "upstream": UpstreamPolicy,
    "hard-offline": HardOfflinePolicy,
    "split": SplitPolicy,
}


def make_policy(name: str) -> PoisonPolicy:
    try:
        return POLICY_CLASSES[name]()
    except KeyError:
        raise ValueError(f"unknown poison policy {name!r} (choose from {', '.join(POLICY_CLASSES)})") from None


__all__ = ["POLICY_CLASSES", "HardOfflinePolicy", "PoisonPolicy", "SplitPolicy", "UpstreamPolicy", "hard_offline",
           "make_policy", "split_in_place"]
