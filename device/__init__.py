"""hugepfn.device: the emulated GPU-style PCI device and the vfio-user server that exposes it."""
