"""A sender in its own process, for the tests:
``sender_proc.py IP PORT TAG COUNT SIZE [typed] [nocredits] [report-credits]``.

Message ``seq`` of connection ``tag`` is ``payload(tag, seq, size)`` with immediate data ``seq``.
``typed``: sample ``seq`` is two typed messages (``Sender.send_tensor``), ``image(tag, seq)`` and
``label(tag, seq)`` as parts 0 and 1 of index ``seq``, epoch 3, shard ``tag``, item ``seq``.
``nocredits``: ignore the receiver's credits; ``report-credits``: the JSON line has what they did.
Prints one JSON line with what it sent, or the error, and exits 0 / 1.
"""

import json
import sys

import gdrx
from payload import image, label, payload


def main() -> int:
    ip, port, tag, count, size = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6])
    opts = set(sys.argv[6:])
    typed = "typed" in opts
    out = {"tag": tag}
    try:
        with gdrx.Sender(ip, port, max_msg=size, tag=tag, timeout=120.0,
                         credits="nocredits" not in opts) as tx:
            for seq in range(count):
                if typed:
                    fields = dict(index=seq, epoch=3, shard=tag, item=seq, parts=2)
                    tx.send_tensor(image(tag, seq), part=0, imm=seq, **fields)
                    tx.send_tensor(label(tag, seq), part=1, imm=seq, **fields)
                else:
                    tx.send(payload(tag, seq, size), imm=seq)
            out["sent"] = tx.sent
            if "report-credits" in opts:
                out["credits"] = tx.credits
        print(json.dumps(out), flush=True)
        return 0
    except gdrx.GdrxError as e:
        print(json.dumps({"tag": tag, "error": str(e), "type": type(e).__name__}), flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
