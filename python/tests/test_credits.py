"""Credits: a receiver grants each sender its share of the posted buffers, so a slow consumer
holds its senders back at the source, with no RNR NAK (counted by the rxe device's hardware
counters) and nothing lost. The same run without credits is held back by RNR NAKs instead:
that is the storm credits prevent."""

import time
from pathlib import Path

import pytest

import gdrx
from payload import check


def rnr_naks(dev: str) -> int:
    """RNR NAKs the device has sent (as the receiver: a message found the SRQ empty)."""
    return int(Path(f"/sys/class/infiniband/{dev}/ports/1/hw_counters/send_rnr_err").read_text())


@pytest.mark.parametrize("credits", [True, False], ids=["credits", "no-credits"])
@pytest.mark.parametrize("n", [1, 2], ids=["1-sender", "2-senders"])
def test_a_slow_consumer_holds_its_senders_back(rdma, senders, credits, n):
    total, slots = 150, 8
    before = rnr_naks(rdma.dev)
    opts = ("report-credits",) + (() if credits else ("nocredits",))
    with gdrx.Receiver(ip=rdma.ip, slot_size=512, slots=slots, timeout=120, expect_senders=n) as rx:
        procs = [senders(rx, tag, total, 512, options=opts) for tag in range(n)]
        nxt = dict.fromkeys(range(n), 0)
        for msg in rx:
            check(msg.numpy(), msg.peer, msg.imm)
            assert msg.imm == nxt[msg.peer], "every message once, in order"
            nxt[msg.peer] += 1
            del msg
            time.sleep(0.002)  # a consumer slower than its senders
        results = [p.finish() for p in procs]
    naks = rnr_naks(rdma.dev) - before
    assert nxt == dict.fromkeys(range(n), total)
    for r in results:
        assert r["sent"] == total, r
        if credits:
            c = r["credits"]
            # Granted exactly what it sent, or more (its share of the buffers posted at the end).
            assert total <= c["grant"] <= total + slots, c
            assert c["waits"] > 0 and c["reads"] > 0, f"the slow consumer made it wait: {c}"
        else:
            assert r["credits"] is None, r
    if credits:
        assert naks == 0, f"{naks} RNR NAKs with credits"
    else:
        assert naks > 0, "without credits the senders overrun the posted buffers"
    print(f"{n} sender(s), credits {'on' if credits else 'off'}: {naks} RNR NAKs; {results}")
