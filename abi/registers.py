"""The device's BAR0 register map (docs/device.md): the offsets, bits and sizes the device's
register file (hugepfn.device.registers) implements and the host's drivers and error source
read.  Registers are 32 bits wide, little-endian."""
from __future__ import annotations

# Register offsets.
REG_ID = 0x0000                 # RO  vendor_id | device_id << 16
REG_VERSION = 0x0004            # RO  register-map version
REG_STATUS = 0x0008             # RO/W1C
REG_CONTROL = 0x000C            # RW
REG_DOORBELL = 0x0010           # WO  write N: raise interrupt vector N; reads 0
REG_DOORBELL_COUNT = 0x0014     # RO  doorbells rung since reset
REG_MEM_BAR = 0x0020            # RO  index of the first memory BAR (0xFFFFFFFF: none)
REG_MEM_SIZE_LO = 0x0028        # RO  its device memory size, 64-bit
REG_MEM_SIZE_HI = 0x002C
REG_MEM_DPA_LO = 0x0030         # RO  its device physical base address, 64-bit
REG_MEM_DPA_HI = 0x0034
REG_POISON_RANGES = 0x0038      # RO  merged poisoned ranges on the device
REG_SCRATCH = 0x0040            # RW  16 scratch registers, 0x40..0x7C
SCRATCH_COUNT = 16
REG_ERRQ_CAPACITY = 0x1000      # RO  records the queue holds
REG_ERRQ_COUNT = 0x1004         # RO  records queued (TAIL - HEAD)
REG_ERRQ_HEAD = 0x1008          # RW  consumer index; write HEAD+n to retire n records
REG_ERRQ_TAIL = 0x100C          # RO  producer index
REG_ERRQ_RECORD_SIZE = 0x1010   # RO  bytes per record
REG_ERRQ_LOST = 0x1014          # RO  records dropped because the queue was full
REG_ERRQ_WINDOW = 0x1100        # RO  the record at HEAD (zeros when empty)
ERRQ_WINDOW_SIZE = 0x100

REGISTER_MAP_VERSION = 0x00010000

STATUS_READY = 1 << 0           # RO  always 1 once the device is up
STATUS_ERRQ_PENDING = 1 << 1    # RO  the error queue is not empty
STATUS_ERRQ_OVERFLOW = 1 << 2   # W1C a record was dropped; writing 1 also zeroes ERRQ_LOST
STATUS_POISON = 1 << 3          # RO  some device memory is poisoned
STATUS_INTX = 1 << 4            # W1C INTx is asserted; writing 1 deasserts it

CONTROL_ERR_IRQ = 1 << 0        # RW  raise the error interrupt when a record is queued (default 1)
CONTROL_RW = CONTROL_ERR_IRQ
CONTROL_DEFAULT = CONTROL_ERR_IRQ
