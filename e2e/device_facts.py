"""What the e2e guest checks, read from the device model (hugepfn.device.gpu).

guest_facts(profile) -> {KEY: value} for /etc/e2e.conf (see e2e/guest-init.sh).
"""
from __future__ import annotations


def guest_facts(profile: str) -> dict[str, str]:
    try:
        from hugepfn.device import gpu  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"the device model is not built yet ({exc})") from None
    raise RuntimeError("register map not wired in yet")
