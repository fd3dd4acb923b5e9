"""cffi declarations for the part of libvfio-user's public API that hugepfn uses.

Written from the documented API in ``libvfio-user.h`` (paraphrased, not copied):
only the functions, callback types and the two structs the backend touches.
ABI mode reads no header, so every layout here must match the library's:

* C enums are passed as ``int`` (same calling convention on x86-64/aarch64).
* ``loff_t`` is a signed 64-bit integer on Linux.
* ``vfu_dma_info_t`` is {iova iovec, vaddr, mapping iovec, page_size, prot}.
"""
from __future__ import annotations

CDEF = r"""
typedef int64_t loff_t;
struct iovec { void *iov_base; size_t iov_len; };

typedef struct vfu_ctx vfu_ctx_t;

typedef struct {
    struct iovec iova;
    void *vaddr;
    struct iovec mapping;
    size_t page_size;
    uint32_t prot;
} vfu_dma_info_t;

typedef void (*vfu_log_fn)(vfu_ctx_t *ctx, int level, const char *msg);
typedef ssize_t (*vfu_region_access_fn)(vfu_ctx_t *ctx, char *buf, size_t count,
                                        loff_t offset, bool is_write);
typedef int (*vfu_reset_fn)(vfu_ctx_t *ctx, int reset_type);
typedef void (*vfu_dma_fn)(vfu_ctx_t *ctx, vfu_dma_info_t *info);
typedef void (*vfu_irq_state_fn)(vfu_ctx_t *ctx, uint32_t start, uint32_t count, bool mask);

vfu_ctx_t *vfu_create_ctx(int transport, const char *path, int flags, void *pvt, int dev_type);
int vfu_realize_ctx(vfu_ctx_t *ctx);
int vfu_attach_ctx(vfu_ctx_t *ctx);
int vfu_get_poll_fd(vfu_ctx_t *ctx);
int vfu_run_ctx(vfu_ctx_t *ctx);
void vfu_destroy_ctx(vfu_ctx_t *ctx);

int vfu_setup_log(vfu_ctx_t *ctx, vfu_log_fn log, int level);
int vfu_setup_region(vfu_ctx_t *ctx, int region_idx, size_t size, vfu_region_access_fn access,
                     int flags, struct iovec *mmap_areas, uint32_t nr_mmap_areas,
                     int fd, uint64_t offset);
int vfu_setup_device_reset_cb(vfu_ctx_t *ctx, vfu_reset_fn reset);
int vfu_setup_device_dma(vfu_ctx_t *ctx, size_t max_regions, vfu_dma_fn reg, vfu_dma_fn unreg);
int vfu_setup_device_nr_irqs(vfu_ctx_t *ctx, int irq_type, uint32_t count);
int vfu_setup_irq_state_callback(vfu_ctx_t *ctx, int irq_type, vfu_irq_state_fn cb);
int vfu_irq_trigger(vfu_ctx_t *ctx, uint32_t subindex);

int vfu_pci_init(vfu_ctx_t *ctx, int pci_type, int hdr_type, int revision);
void *vfu_pci_get_config_space(vfu_ctx_t *ctx);
"""

# Values of the library's public constants (libvfio-user.h), by name.
VFU_TRANS_SOCK = 0
VFU_DEV_TYPE_PCI = 0
LIBVFIO_USER_FLAG_ATTACH_NB = 1 << 0

VFU_REGION_FLAG_READ = 1 << 0
VFU_REGION_FLAG_WRITE = 1 << 1
VFU_REGION_FLAG_MEM = 1 << 2
VFU_REGION_FLAG_ALWAYS_CB = 1 << 3
VFU_REGION_FLAG_64_BITS = 1 << 4
VFU_REGION_FLAG_PREFETCH = 1 << 5

# enum vfu_reset_type: the one the backend tells apart (the others are device resets).
VFU_RESET_LOST_CONN = 1

# vfu_pci_type_t and the only header type the library accepts.
VFU_PCI_TYPE_CONVENTIONAL = 0
VFU_PCI_TYPE_EXPRESS = 3
PCI_HEADER_TYPE_NORMAL = 0

# The library's regions are BAR0-5, ROM, CONFIG and VGA; nothing above index 8.
VFU_PCI_DEV_NUM_REGIONS = 9

# the syslog level vfu_setup_log is given.
LOG_INFO = 6
