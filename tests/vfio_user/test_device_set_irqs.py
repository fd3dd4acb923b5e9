"""DEVICE_SET_IRQS: eventfds for INTx, MSI-X and ERR; mask/unmask; trigger; disable."""
from __future__ import annotations

import errno
import os

import pytest

from hugepfn.abi import vfio_user as wire
from hugepfn.abi.vfio import VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX

from .helpers import Command, error_of, irq_counts, still_answers, wait_irq

EVENTFD_TRIGGER = wire.IRQ_SET_DATA_EVENTFD | wire.IRQ_SET_ACTION_TRIGGER
NONE_TRIGGER = wire.IRQ_SET_DATA_NONE | wire.IRQ_SET_ACTION_TRIGGER
BOOL_TRIGGER = wire.IRQ_SET_DATA_BOOL | wire.IRQ_SET_ACTION_TRIGGER


def set_irqs(index, start, count, flags, data=b""):
    return wire.SetIrqs.build({"argsz": 20 + len(data), "flags": flags, "index": index, "start": start,
                               "count": count, "data": data})


@pytest.mark.parametrize("index", [VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_ERR_IRQ_INDEX])
def test_eventfd_for_intx_and_err_fires_on_data_none_trigger(client, index):
    client.wire_eventfds(index, 1)
    client.set_irqs(index, 0, 1, NONE_TRIGGER)
    assert wait_irq(client, index, 0) == 1
    assert irq_counts(client, index, range(1)) == [0]


def test_msix_vectors_fire_individually_when_the_device_raises_them(client, facts):
    client.wire_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, facts.msix_vectors)
    facts.enable_msix(client)
    facts.ring(client, 2)
    facts.ring(client, 2)
    facts.ring(client, 0)
    assert wait_irq(client, VFIO_PCI_MSIX_IRQ_INDEX, 0) == 1
    assert irq_counts(client, VFIO_PCI_MSIX_IRQ_INDEX, range(facts.msix_vectors)) == [0, 0, 2, 0, 0, 0, 0, 0]


def test_msix_disabled_doorbell_raises_intx(client, facts):
    client.wire_eventfds(VFIO_PCI_INTX_IRQ_INDEX, 1)
    facts.ring(client, 3)
    assert wait_irq(client, VFIO_PCI_INTX_IRQ_INDEX, 0) == 1


def test_data_bool_triggers_only_the_chosen_vectors(client):
    client.wire_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, 4)
    client.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, 1, 3, BOOL_TRIGGER, b"\x01\x00\x01")
    assert wait_irq(client, VFIO_PCI_MSIX_IRQ_INDEX, 3) == 1
    assert irq_counts(client, VFIO_PCI_MSIX_IRQ_INDEX, range(4)) == [0, 1, 0, 0]


def test_mask_reaches_the_device_which_holds_the_vector_pending_until_unmask(client, device, facts):
    client.wire_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, facts.msix_vectors)
    facts.enable_msix(client)
    client.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, 1, 1, wire.IRQ_SET_DATA_NONE | wire.IRQ_SET_ACTION_MASK)
    assert device.msix.client_masked == {1}
    facts.ring(client, 1)
    assert irq_counts(client, VFIO_PCI_MSIX_IRQ_INDEX, range(4)) == [0, 0, 0, 0]
    assert device.msix.is_pending(1)
    client.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, 1, 1, wire.IRQ_SET_DATA_NONE | wire.IRQ_SET_ACTION_UNMASK)
    assert device.msix.client_masked == set()
    assert wait_irq(client, VFIO_PCI_MSIX_IRQ_INDEX, 1) == 1
    assert irq_counts(client, VFIO_PCI_MSIX_IRQ_INDEX, range(4)) == [0, 0, 0, 0]


def test_disable_all_closes_the_eventfds(client, server, backend, facts):
    [efd] = client.wire_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, 1, start=3)
    facts.enable_msix(client)
    client.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, 0, 0, NONE_TRIGGER)
    facts.ring(client, 3)
    assert irq_counts(client, VFIO_PCI_MSIX_IRQ_INDEX, range(3, 4)) == [0]
    if backend == "python":
        assert server.engine.irqs.vector(VFIO_PCI_MSIX_IRQ_INDEX, 3).eventfd is None


def test_reassigning_an_eventfd_replaces_the_old_one(client, facts):
    [old] = client.wire_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, 1)
    old_copy = os.dup(old)
    client.wire_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, 1)
    facts.enable_msix(client)
    facts.ring(client, 0)
    assert wait_irq(client, VFIO_PCI_MSIX_IRQ_INDEX, 0) == 1
    os.set_blocking(old_copy, False)
    with pytest.raises(BlockingIOError):
        os.read(old_copy, 8)
    os.close(old_copy)


@pytest.mark.parametrize("payload,nfds", [
    (set_irqs(2, 0, 1, wire.IRQ_SET_DATA_EVENTFD | wire.IRQ_SET_DATA_BOOL | wire.IRQ_SET_ACTION_TRIGGER), 0),
    (set_irqs(2, 0, 1, wire.IRQ_SET_DATA_NONE), 0),                                   # no action
    (set_irqs(9, 0, 1, NONE_TRIGGER), 0),                                             # bad index
    (set_irqs(2, 7, 2, NONE_TRIGGER), 0),                                             # past the last vector
    (set_irqs(2, 0xFFFF_FFFF, 1, NONE_TRIGGER), 0),                                   # start overflow
    (set_irqs(2, 0, 2, BOOL_TRIGGER, b"\x01"), 0),                                    # bool data too short
    (set_irqs(2, 0, 2, EVENTFD_TRIGGER), 1),                                          # 2 vectors, 1 fd
    (set_irqs(2, 0, 1, NONE_TRIGGER), 1),                                             # fd without DATA_EVENTFD
    (set_irqs(2, 0, 1, NONE_TRIGGER)[:16], 0),                                        # short
])
def test_invalid_set_irqs_is_einval_and_fds_are_not_kept(raw, payload, nfds):
    fds = [os.eventfd(0) for _ in range(nfds)]
    assert error_of(raw, Command.DEVICE_SET_IRQS, payload, fds) == errno.EINVAL
    still_answers(raw)
    for fd in fds:
        os.close(fd)


def test_python_engine_refuses_two_actions_and_a_lying_argsz(raw, backend):
    if backend != "python":
        pytest.skip("libvfio-user accepts several action bits and an argsz larger than the payload")
    two_actions = set_irqs(2, 0, 1, NONE_TRIGGER | wire.IRQ_SET_ACTION_MASK)
    assert error_of(raw, Command.DEVICE_SET_IRQS, two_actions) == errno.EINVAL
    lying = wire.SetIrqs.build({"argsz": 99, "flags": NONE_TRIGGER, "index": 2, "start": 0, "count": 1,
                                "data": b""})
    assert error_of(raw, Command.DEVICE_SET_IRQS, lying) == errno.EINVAL


def test_a_non_eventfd_is_refused(raw, backend, tmp_path):
    if backend != "python":
        pytest.skip("libvfio-user does not check the fd type (it would eventfd_write into it)")
    r, w = os.pipe()
    assert error_of(raw, Command.DEVICE_SET_IRQS, set_irqs(2, 0, 1, EVENTFD_TRIGGER), [w]) == errno.EINVAL
    os.close(r)
    os.close(w)
    still_answers(raw)
