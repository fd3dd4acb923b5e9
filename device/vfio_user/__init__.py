"""vfio-user: serve a ``ServedDevice`` to vfio-user clients (QEMU's vfio-user-pci, the host model).

(every message is declared once in hugepfn.abi.vfio_user, with its struct fast paths)

engine      the sans-IO server engine: bytes + fds in, replies (bytes + fds) and events out
dma, irq    the per-connection DMA table and IRQ/eventfd state the engine owns
transport   AF_UNIX socket plumbing: listener (0600), SCM_RIGHTS send/receive
server      one-client-at-a-time socket server driving an engine per connection
backends    backend selection: python (this engine) or libvfio-user (cffi)
"""
