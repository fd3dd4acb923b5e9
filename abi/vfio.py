"""VFIO's PCI device ABI (include/uapi/linux/vfio.h): region and IRQ indexes, and the flags of
struct vfio_device_info, vfio_region_info and vfio_irq_info.  The vfio-user protocol carries the
same numbers, so the device, both vfio-user backends, the host client and the host's vfio-pci
model all import them from here."""
from __future__ import annotations

# VFIO PCI region indexes.
VFIO_PCI_BAR0_REGION_INDEX = 0
VFIO_PCI_BAR5_REGION_INDEX = 5
VFIO_PCI_ROM_REGION_INDEX = 6
VFIO_PCI_CONFIG_REGION_INDEX = 7
VFIO_PCI_NUM_REGIONS = 9

# VFIO PCI IRQ indexes.
VFIO_PCI_INTX_IRQ_INDEX = 0
VFIO_PCI_MSI_IRQ_INDEX = 1
VFIO_PCI_MSIX_IRQ_INDEX = 2
VFIO_PCI_ERR_IRQ_INDEX = 3
VFIO_PCI_REQ_IRQ_INDEX = 4
VFIO_PCI_NUM_IRQS = 5

# struct vfio_device_info flags.
VFIO_DEVICE_FLAGS_RESET = 1 << 0
VFIO_DEVICE_FLAGS_PCI = 1 << 1

# struct vfio_region_info flags.
VFIO_REGION_INFO_FLAG_READ = 1 << 0
VFIO_REGION_INFO_FLAG_WRITE = 1 << 1
VFIO_REGION_INFO_FLAG_MMAP = 1 << 2
VFIO_REGION_INFO_FLAG_CAPS = 1 << 3

# struct vfio_irq_info flags.
VFIO_IRQ_INFO_EVENTFD = 1 << 0

# struct vfio_device_feature flags, and the features the host model's low-power steps use.
VFIO_DEVICE_FEATURE_SET = 1 << 17
VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY = 3
VFIO_DEVICE_FEATURE_LOW_POWER_EXIT = 5
