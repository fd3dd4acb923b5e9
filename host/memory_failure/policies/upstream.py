"""upstream: what v6.19/v7.0 do — memory_failure_pfn only signals; huge leaves stay; no record."""
from __future__ import annotations

from .base import PoisonPolicy


class UpstreamPolicy(PoisonPolicy):
    name = "upstream"
