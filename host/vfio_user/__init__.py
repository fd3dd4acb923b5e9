"""hugepfn.host.vfio_user: the host side of vfio-user (a client that attaches to a served device)."""
from .client import VfioUserClient, VfioUserError, VfioUserProtocolError

__all__ = ["VfioUserClient", "VfioUserError", "VfioUserProtocolError"]
