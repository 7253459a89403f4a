"""Typed payloads: the SampleHeader (dtype, shape, epoch, shard, index) that Sender.send_tensor
writes, Message.tensor() reading it with and without header split, samples in parts, and the
errors for untyped or mismatched messages."""

import threading

import numpy as np
import pytest

import gdrx
from payload import image, label


def test_sample_header_roundtrip_and_bad_fields():
    h = gdrx.SampleHeader("float32", [4, 3, 8, 8], index=2**40, epoch=5, shard=9, item=17, batch=True)
    assert (h.dtype, h.shape, h.nbytes) == ("float32", [4, 3, 8, 8], 4 * 3 * 8 * 8 * 4)
    assert (h.index, h.epoch, h.shard, h.item, h.count, h.batch) == (2**40, 5, 9, 17, 4, True)
    b = h.encode()
    assert len(b) == 64 and b[:4] == b"GDRX"
    assert gdrx.SampleHeader.decode(b + b"padding") == h
    assert "float32" in repr(h) and "index=1099511627776" in repr(h)
    scalar = gdrx.SampleHeader("int64", [], part=1, parts=2)
    assert (scalar.shape, scalar.nbytes, scalar.count, scalar.batch) == ([], 8, 1, False)

    with pytest.raises(gdrx.ConfigError, match="cannot travel"):
        gdrx.SampleHeader("object", [1])
    with pytest.raises(gdrx.ConfigError, match="6 dimensions"):
        gdrx.SampleHeader("uint8", [1] * 7)
    with pytest.raises(gdrx.ConfigError, match="part 2 is not below parts 2"):
        gdrx.SampleHeader("uint8", [1], part=2, parts=2)
    with pytest.raises(gdrx.ConfigError, match="batch"):
        gdrx.SampleHeader("uint8", [], batch=True)
    with pytest.raises(gdrx.ProtocolError, match="bad magic"):
        gdrx.SampleHeader.decode(b"\0" * 64)
    with pytest.raises(gdrx.ProtocolError, match="need 64"):
        gdrx.SampleHeader.decode(b[:63])
    bad = bytearray(b)
    bad[8] = 3  # an unknown dtype code
    with pytest.raises(gdrx.ProtocolError, match="dtype"):
        gdrx.SampleHeader.decode(bytes(bad))


@pytest.mark.parametrize("split", [False, True], ids=["inline-header", "header-split"])
def test_typed_samples_in_two_parts_from_a_sender_process(rdma, senders, split):
    n = 500
    # 768 bytes of image; without header split the buffer also holds the 64-byte header.
    slot = 768 if split else 768 + 64
    with gdrx.Receiver(ip=rdma.ip, slot_size=slot, slots=32, timeout=120, header_split=split) as rx:
        assert rx.report()["max_message"] == 768 + 64
        s = senders(rx, 4, n, 768 + 64, typed=True)
        seen = 0
        for msg in rx:
            t = msg.tensor()
            h = t.header
            seq = h.index
            assert (h.epoch, h.shard, h.item, h.parts, msg.imm) == (3, 4, seq, 2, seq)
            assert t.address == msg.address + (0 if split else 64), "the tensor is in the buffer"
            arr = t.numpy()
            assert arr.ctypes.data == t.address, "zero copy"
            if h.part == 0:
                assert msg.nbytes == (768 if split else 768 + 64)
                assert (t.dtype, t.shape, arr.dtype, arr.shape) == ("float32", [3, 8, 8], np.float32, (3, 8, 8))
                np.testing.assert_array_equal(arr, image(4, seq))
            else:
                assert (t.dtype, t.shape, arr.shape) == ("int64", [], ())
                assert int(arr) == int(label(4, seq))
                seen += 1
        assert seen == n
        assert s.finish() == {"tag": 4, "sent": 2 * n}
        del msg, t, arr
        assert rx.stats()["messages_alive"] == 0


def test_tensors_groups_parts_and_the_tensors_hold_the_buffers(rdma, senders):
    with gdrx.Receiver(ip=rdma.ip, slot_size=768, slots=64, timeout=120, header_split=True) as rx:
        s = senders(rx, 2, 20, 768 + 64, typed=True)
        got = list(gdrx.tensors(rx))
        assert s.finish() == {"tag": 2, "sent": 40}
        assert len(got) == 20 and all(isinstance(g, tuple) and len(g) == 2 for g in got)
        # The messages were released; the 40 tensors hold the 40 buffers.
        assert rx.stats()["messages_alive"] == 40
        for seq, (img, lab) in enumerate(got):
            assert img.header.index == lab.header.index == seq
            np.testing.assert_array_equal(img.numpy(), image(2, seq))
            assert int(lab.numpy()) == int(label(2, seq))
        del got, img, lab
        assert rx.stats()["messages_alive"] == 0


def test_tensor_refuses_untyped_and_mismatched_messages(rdma):
    with gdrx.Receiver(ip=rdma.ip, slot_size=256, slots=8, timeout=30) as rx:
        ip, port = rx.address
        got = []
        stop = threading.Event()

        def poll():
            while not stop.is_set() and len(got) < 3:
                got.extend(rx.poll(timeout=0.2))

        poller = threading.Thread(target=poll)
        poller.start()
        try:
            with gdrx.Sender(ip, port, max_msg=256, timeout=30) as tx:
                tx.send(b"x" * 100)
                # A header saying float32 (4,) = 16 bytes, followed by 12.
                tx.send_parts(gdrx.SampleHeader("float32", [4]).encode(), b"\1" * 12)
                tx.send_tensor(np.arange(4, dtype=np.float32), index=7)
            poller.join(timeout=30)
        finally:
            stop.set()
            poller.join()
        assert len(got) == 3, got
        untyped, short, good = got
        with pytest.raises(gdrx.ProtocolError, match="no sample header.*Sender.send_tensor"):
            untyped.tensor()
        with pytest.raises(gdrx.ProtocolError, match="12 payload bytes for a float32 tensor of shape \\[4\\]"):
            short.tensor()
        assert untyped.tobytes() == b"x" * 100, "the raw bytes stay readable"
        t = good.tensor()
        assert t.header.index == 7
        np.testing.assert_array_equal(np.from_dlpack(t), np.arange(4, dtype=np.float32))
        good.release()
        with pytest.raises(gdrx.Released):
            good.tensor()
        np.testing.assert_array_equal(t.numpy(), np.arange(4, dtype=np.float32))
