"""hugepfn.abi: what the device, the host model and the tests must agree on, declared once —
PCI configuration registers, VFIO region and IRQ indexes and flags, the device's BAR0 register
map, the CPER error records — and the one size grammar of profiles, scenarios and flags."""
