"""PyTorch and JAX consume received messages through DLPack: 10,000 messages each from a sender
in another process, each verified, zero copy (the framework's data pointer is the receive
buffer), and the buffer recycled when the last framework view dies."""

import gc

import numpy as np
import pytest

import gdrx
from payload import check, expected, header, image, label

torch = pytest.importorskip("torch", reason="torch is installed by deploy/python-env.sh")
jax = pytest.importorskip("jax", reason="jax is installed by deploy/python-env.sh")

import gdrx.jax  # noqa: E402
import gdrx.torch  # noqa: E402

N = 10000


def test_torch_consumes_10000_messages_zero_copy(rdma, senders):
    size = 1024
    rx = gdrx.Receiver(ip=rdma.ip, slot_size=size, slots=128, timeout=120)
    s = senders(rx, 11, N, size)
    ds = gdrx.torch.RdmaIterableDataset(rx)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0)
    got = 0
    for t in loader:
        assert isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.shape == (size,)
        arr = t.numpy()  # a view, no copy
        tag, seq = header(arr)
        assert (tag, seq) == (11, got)
        check(arr, tag, seq)
        got += 1
    assert got == N
    assert s.finish() == {"tag": 11, "sent": N}
    st = rx.stats()
    assert st["completions"] == N and st["completion_errors"] == 0
    rx.close()


def test_torch_tensor_is_the_receive_buffer_and_holds_it(rdma, senders):
    with gdrx.Receiver(ip=rdma.ip, slot_size=4096, slots=8, timeout=60) as rx:
        s = senders(rx, 12, 1, 4096)
        (msg,) = rx.poll(timeout=60)
        t = torch.from_dlpack(msg)
        assert t.data_ptr() == msg.address, "zero copy"
        view = t[100:200].view(torch.int32)  # a view of a view keeps the buffer
        as_np = view.numpy()                 # and a numpy view of a torch view
        msg.release()
        del t, view
        gc.collect()
        assert rx.stats()["messages_alive"] == 1
        assert np.array_equal(as_np.view(np.uint8), expected(12, 0, 4096)[100:200])
        del as_np
        gc.collect()
        assert rx.stats()["messages_alive"] == 0
        s.finish()


def test_jax_consumes_10000_messages(rdma, senders):
    size = 1024
    with gdrx.Receiver(ip=rdma.ip, slot_size=size, slots=128, timeout=120) as rx:
        s = senders(rx, 13, N, size)
        got = 0
        for a in gdrx.jax.iterate(rx):
            assert isinstance(a, jax.Array) and a.dtype == jax.numpy.uint8 and a.shape == (size,)
            arr = np.asarray(a)
            tag, seq = header(arr)
            assert (tag, seq) == (13, got)
            check(arr, tag, seq)
            got += 1
            del a, arr
        assert got == N
        assert s.finish() == {"tag": 13, "sent": N}
        gc.collect()
        st = rx.stats()
        assert st["completions"] == N and st["messages_alive"] == 0, st


def test_jax_array_views_the_receive_buffer(rdma, senders):
    with gdrx.Receiver(ip=rdma.ip, slot_size=4096, slots=8, timeout=60) as rx:
        s = senders(rx, 14, 1, 4096)
        (msg,) = rx.poll(timeout=60)
        a = jax.dlpack.from_dlpack(msg)
        ptr = a.unsafe_buffer_pointer()
        assert ptr == msg.address, f"zero copy: jax {ptr:#x}, buffer {msg.address:#x}"
        msg.release()
        gc.collect()
        assert rx.stats()["messages_alive"] == 1, "the jax array holds the buffer"
        check(np.asarray(a), 14, 0)
        del a
        gc.collect()
        assert rx.stats()["messages_alive"] == 0
        s.finish()


def test_torch_typed_samples_arrive_as_image_label_pairs(rdma, senders):
    n = 300
    with gdrx.Receiver(ip=rdma.ip, slot_size=768, slots=64, timeout=120, header_split=True) as rx:
        s = senders(rx, 21, n, 768 + 64, typed=True)
        ds = gdrx.torch.RdmaIterableDataset(rx, typed=True)
        got = 0
        for img, lab in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0):
            assert img.dtype == torch.float32 and img.shape == (3, 8, 8)
            assert lab.dtype == torch.int64 and lab.shape == ()
            assert torch.equal(img, torch.from_numpy(image(21, got)))
            assert int(lab) == int(label(21, got))
            got += 1
        assert got == n
        assert s.finish() == {"tag": 21, "sent": 2 * n}
        del img, lab
        gc.collect()
        assert rx.stats()["messages_alive"] == 0


def test_jax_typed_samples(rdma, senders):
    n = 300
    with gdrx.Receiver(ip=rdma.ip, slot_size=768 + 64, slots=64, timeout=120) as rx:
        s = senders(rx, 22, n, 768 + 64, typed=True)
        got = 0
        for img, lab in gdrx.jax.iterate_tensors(rx):
            assert img.dtype == jax.numpy.float32 and img.shape == (3, 8, 8)
            np.testing.assert_array_equal(np.asarray(img), image(22, got))
            assert int(lab) == int(label(22, got))
            got += 1
            del img, lab
        assert got == n
        assert s.finish() == {"tag": 22, "sent": 2 * n}
