"""Poison policies: what the driver does about a poisoned pfn (named, opt-in).

* ``upstream``     — the merged kernel behaviour (v6.19+): signals only, nothing unmapped.
* ``hard-offline`` — Peter Xu's FALLBACK design with Jiaqi Yan's hard-offline knob (a proposal):
  record the pfn, zap its page (the whole covering PUD/PMD goes), refault around the poison.
* ``split``        — HGM-like in-place split (what no kernel does for pfnmaps): the covering
  leaf becomes lower-level leaves so only the poisoned 4 KiB is unmapped.
"""
from __future__ import annotations

from .base import PoisonPolicy
from .hard_offline import HardOfflinePolicy
from .split import SplitPolicy
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
