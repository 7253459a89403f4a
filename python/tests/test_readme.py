"""The README's Python quick start, run as it is written (IP is the testbed's address)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def quick_start() -> str:
    text = README.read_text()
    block = re.search(
        r"<!-- python quick start: begin -->\s*```python\n(.*?)```\s*<!-- python quick start: end -->",
        text,
        re.S,
    )
    assert block, "the README has a Python quick start between its markers"
    return block.group(1)


def test_the_readme_quick_start_runs(rdma, capsys):
    code = quick_start()
    exec(compile(code, "README.md (python quick start)", "exec"), {"IP": rdma.ip})
    out = capsys.readouterr().out
    assert out.strip() == "100 messages", out
