"""The receiver with numpy as the consumer: verified messages from senders in other processes,
zero copy, recycling on the last view, back-pressure, threads, garbage collection, close with
live arrays, and typed errors."""

import gc
import random
import struct
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import gdrx
from payload import check, header

ROOT = Path(__file__).resolve().parents[2]


def drain(rx, want, on_message):
    """Iterates `rx` to the end of the stream, calling on_message for each message."""
    got = 0
    for msg in rx:
        on_message(msg)
        got += 1
    assert got == want, f"{got} of {want} messages"
    return got


def test_numpy_consumes_10000_messages_from_two_sender_processes(rdma, senders):
    with gdrx.Receiver(ip=rdma.ip, slot_size=1024, slots=128, timeout=120, expect_senders=2) as rx:
        a = senders(rx, 0, 5000, 1024)
        b = senders(rx, 1, 5000, 1000)
        nxt = {0: 0, 1: 0}
        sizes = {0: 1024, 1: 1000}

        def on(msg):
            arr = np.from_dlpack(msg)
            assert arr.dtype == np.uint8 and arr.shape == (msg.nbytes,)
            assert arr.ctypes.data == msg.address, "zero copy: the array is the receive buffer"
            tag, seq = header(arr)
            assert tag == msg.peer and seq == msg.imm == nxt[tag], (tag, seq, msg.imm, nxt)
            assert msg.nbytes == sizes[tag]
            check(arr, tag, seq)
            nxt[tag] += 1

        drain(rx, 10000, on)
        assert a.finish() == {"tag": 0, "sent": 5000}
        assert b.finish() == {"tag": 1, "sent": 5000}
        s = rx.stats()
        assert s["completions"] == 10000 and s["completion_errors"] == 0
        assert s["connected"] == 2 and s["gone"] == 2
        assert rx.ended
    print(f"numpy: 10000 messages verified, zero copy; {s}")


def test_the_slot_is_reposted_only_when_the_last_view_dies(rdma, senders):
    with gdrx.Receiver(ip=rdma.ip, slot_size=256, slots=16, timeout=60) as rx:
        s = senders(rx, 7, 1, 256)
        (msg,) = rx.poll(timeout=60)
        arr = msg.numpy()
        view = arr[10:20]                 # a slice of a view keeps the buffer
        mv = msg.memoryview
        assert bytes(mv[:8]) == arr[:8].tobytes()
        base = rx.stats()["returned"]
        assert msg.release() is True
        del arr, mv
        gc.collect()
        st = rx.stats()
        assert st["messages_alive"] == 1 and st["returned"] == base, st
        check_slot_lent = st["lent"]
        assert check_slot_lent >= 1, st
        del view
        gc.collect()
        st = rx.stats()
        assert st["messages_alive"] == 0 and st["returned"] == base + 1, st
        # The pool drains the return on its next poll: the slot is no longer lent.
        rx.poll(timeout=0.2)
        assert rx.stats()["lent"] == check_slot_lent - 1
        s.finish()


def test_a_consumer_holding_every_buffer_stalls_the_sender_and_loses_nothing(rdma, senders):
    slots, total = 16, 200
    with gdrx.Receiver(ip=rdma.ip, slot_size=512, slots=slots, timeout=120) as rx:
        s = senders(rx, 3, total, 512)
        held = []
        while len(held) < slots:
            held += rx.poll(timeout=60)
        assert len(held) == slots
        # Every buffer is held: nothing more can arrive, the sender waits for credit.
        assert rx.poll(timeout=1.0) == []
        st = rx.stats()
        assert st["exhausted"] >= 1 and st["posted"] == 0, st
        assert s.proc.poll() is None, "the sender waits instead of failing"
        seen = [m.imm for m in held]
        for m in held:
            check(m.numpy(), 3, m.imm)
        del held
        gc.collect()
        for msg in rx:
            check(msg.numpy(), 3, msg.imm)
            seen.append(msg.imm)
        assert seen == list(range(total)), "every message once, in order"
        assert s.finish() == {"tag": 3, "sent": total}


def test_four_consumer_threads(rdma, senders):
    total = 4000
    with gdrx.Receiver(ip=rdma.ip, slot_size=2048, slots=64, timeout=120) as rx:
        s = senders(rx, 5, total, 2048)
        seen, lock, errors = [], threading.Lock(), []

        def consume():
            try:
                while not rx.ended:
                    for msg in rx.poll(timeout=0.5, max=8):
                        arr = np.from_dlpack(msg)
                        check(arr, 5, msg.imm)
                        with lock:
                            seen.append(msg.imm)
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=consume) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors
        assert sorted(seen) == list(range(total))
        assert s.finish()["sent"] == total


def test_garbage_collection_in_random_order(rdma, senders):
    n = 64
    with gdrx.Receiver(ip=rdma.ip, slot_size=4096, slots=n, timeout=60) as rx:
        s = senders(rx, 9, n, 4096)
        msgs = []
        while len(msgs) < n:
            msgs += rx.poll(timeout=60)
        rng = random.Random(42)
        things = []
        for m in msgs:
            a = np.from_dlpack(m)
            things += [m, a, a[rng.randrange(1, 4096):], m.memoryview, np.from_dlpack(m)[::2]]
        # Cycles too: an object that refers to a view and to itself.
        for m in msgs[:8]:
            cyc = {"view": m.numpy()}
            cyc["self"] = cyc
            things.append(cyc)
        del msgs, a, m, cyc
        rng.shuffle(things)
        while things:
            things.pop()
            if rng.random() < 0.1:
                gc.collect()
        gc.collect()
        st = rx.stats()
        assert st["messages_alive"] == 0 and st["returned"] == n, st
        s.finish()


def test_close_with_live_arrays_keeps_them_readable(rdma, senders):
    rx = gdrx.Receiver(ip=rdma.ip, slot_size=512, slots=8, timeout=60)
    s = senders(rx, 4, 8, 512)
    msgs = []
    while len(msgs) < 8:
        msgs += rx.poll(timeout=60)
    arrays = [(m.imm, m.numpy()) for m in msgs]
    s.finish()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        alive = rx.close()
    assert alive == 8
    assert any(issubclass(x.category, ResourceWarning) for x in w), [str(x.message) for x in w]
    assert rx.close() == 0, "closing twice is harmless"
    for seq, arr in arrays:
        check(arr, 4, seq)  # still readable after close
    del msgs, arrays, arr
    gc.collect()
    st = rx.stats()
    assert st["closed"] and st["messages_alive"] == 0 and st["returned_after_close"] == 8, st
    with pytest.raises(gdrx.Closed):
        rx.poll(timeout=0)
    with pytest.raises(gdrx.Closed):
        next(iter(rx))


def test_double_release_and_use_after_release_are_reported(rdma, senders):
    with gdrx.Receiver(ip=rdma.ip, slot_size=128, slots=8, timeout=60) as rx:
        s = senders(rx, 2, 1, 128)
        (msg,) = rx.poll(timeout=60)
        assert msg.release() is True
        assert msg.release() is False
        assert msg.released
        assert rx.stats()["double_releases"] == 1
        with pytest.raises(gdrx.Released):
            np.from_dlpack(msg)
        s.finish()


def test_dlpack_protocol_arguments(rdma, senders):
    with gdrx.Receiver(ip=rdma.ip, slot_size=128, slots=8, timeout=60) as rx:
        s = senders(rx, 1, 1, 100)
        (msg,) = rx.poll(timeout=60)
        assert msg.__dlpack_device__() == (1, 0)
        legacy = msg.__dlpack__()
        assert "dltensor" in repr(legacy) and "versioned" not in repr(legacy)
        versioned = msg.__dlpack__(max_version=(1, 1))
        assert "dltensor_versioned" in repr(versioned)
        with pytest.raises(BufferError):
            msg.__dlpack__(max_version=(1, 1), copy=True)
        with pytest.raises(ValueError):
            msg.__dlpack__(stream=1)
        del legacy, versioned  # unconsumed capsules return their reference too
        gc.collect()
        msg.release()
        assert rx.stats()["messages_alive"] == 0
        s.finish()


def test_a_sender_with_messages_larger_than_the_buffers_is_refused_with_the_reason(rdma):
    with gdrx.Receiver(ip=rdma.ip, slot_size=256, slots=8, timeout=10) as rx:
        ip, port = rx.address
        # The receiver takes connection requests while it is polled.
        stop = threading.Event()
        poller = threading.Thread(target=lambda: [rx.poll(timeout=0.2) for _ in iter(stop.is_set, True)])
        poller.start()
        try:
            with pytest.raises(gdrx.Refused) as e:
                gdrx.Sender(ip, port, max_msg=4096, timeout=60)
        finally:
            stop.set()
            poller.join()
        assert "receive buffers hold 256" in str(e.value), str(e.value)
        assert "the peer said: gdrx:" in str(e.value), str(e.value)
        refused = rx.stats()["refused"]
        assert len(refused) == 1 and "up to 4096 bytes" in refused[0], refused


def test_bad_configuration_gives_typed_errors(rdma):
    with pytest.raises(gdrx.ConfigError):
        gdrx.Receiver(ip=rdma.ip, provider="nope")
    with pytest.raises(gdrx.ConfigError):
        gdrx.Receiver(ip=rdma.ip, slot_size=0)
    with pytest.raises(gdrx.ConfigError):
        gdrx.Receiver()
    with pytest.raises(gdrx.ConfigError):
        gdrx.Receiver(ip="not-an-ip")
    with pytest.raises(gdrx.ConfigError, match="handshake_timeout must be a positive"):
        gdrx.Receiver(ip=rdma.ip, handshake_timeout=0)
    with pytest.raises(gdrx.Unsupported):
        gdrx.Receiver(ip=rdma.ip, provider="gpu")
    with pytest.raises(gdrx.NoDevice) as e:
        gdrx.Receiver(ip="127.0.0.1")
    assert rdma.dev in str(e.value), f"names the devices present: {e.value}"
    # An address no interface has (the bind itself fails).
    with pytest.raises(gdrx.NoDevice) as e:
        gdrx.Receiver(ip="10.254.254.254")
    assert "no RDMA device has the address 10.254.254.254" in str(e.value) and rdma.dev in str(e.value), str(e.value)
    with pytest.raises(gdrx.NoDevice) as e:
        gdrx.Receiver(device="no_such_dev0")
    assert rdma.dev in str(e.value), str(e.value)
    assert rdma.dev in gdrx.devices()


def test_waits_are_bounded_and_ctrl_c_interrupts_them(rdma):
    import os
    import signal
    import subprocess
    import sys
    import time

    with gdrx.Receiver(ip=rdma.ip, slot_size=128, slots=8, timeout=0.3) as rx:
        t = time.monotonic()
        assert rx.poll(timeout=0.3) == []
        with pytest.raises(gdrx.Timeout) as e:
            next(iter(rx))
        assert time.monotonic() - t < 30, "timeouts are honoured"
        assert e.value.hint
    # A wait without a timeout, interrupted by SIGINT (Ctrl-C) in another process.
    code = (
        "import sys, gdrx\n"
        "rx = gdrx.Receiver(ip=sys.argv[1])\n"
        "print('waiting', flush=True)\n"
        "try:\n"
        "    rx.poll()\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, rdma.ip], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "waiting"
        time.sleep(0.5)
        os.kill(p.pid, signal.SIGINT)
        out, _ = p.communicate(timeout=60)
        assert out.strip() == "interrupted" and p.returncode == 0, (out, p.returncode)
    finally:
        if p.poll() is None:
            p.kill()


def test_a_sender_that_never_completes_its_handshake_is_refused_and_the_next_is_served(rdma):
    """gdrx-testpeer --stall sends a good Hello and never sends the RTU that would establish the
    connection: the receiver refuses it after handshake_timeout (stats()["refused"]), without
    raising, and serves the sender that came next."""
    peer = ROOT / "target" / "release" / "gdrx-testpeer"
    if not peer.exists():
        pytest.fail(f"{peer} is missing: cargo test --release -p gdrx-tests --no-run (run-tests.sh builds it)")
    with gdrx.Receiver(ip=rdma.ip, slot_size=4096, slots=32, timeout=60, handshake_timeout=2) as rx:
        ip, port = rx.address
        stalled = subprocess.Popen([str(peer), "--stall", f"{ip}:{port}", "--hold", "60"], stdout=subprocess.PIPE, text=True)
        try:
            sent = []

            def send():
                time.sleep(1.0)
                with gdrx.Sender(ip, port, max_msg=4096, timeout=60) as tx:
                    for i in range(50):
                        tx.send(struct.pack("<I", i) * 16)
                        sent.append(i)

            t = threading.Thread(target=send)
            t.start()
            got = []
            for m in rx:
                got.append(struct.unpack_from("<I", bytes(m.memoryview))[0])
                m.release()
            t.join()
            assert stalled.poll() is None, "the stalled sender is still there, half-open"
        finally:
            stalled.kill()
            out = stalled.communicate()[0]
        assert out.strip() == "replied", f"the receiver answered the stalled request: {out!r}"
        assert got == list(range(50)) and sent == got, (got, sent)
        refused = rx.stats()["refused"]
        assert len(refused) == 1 and "accepting it failed" in refused[0], refused
