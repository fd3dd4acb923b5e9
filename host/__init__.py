"""hugepfn.host: a model of the Linux kernel side (mm fault path, vfio-pci drivers, memory failure)."""
