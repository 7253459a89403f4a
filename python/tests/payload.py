"""The test messages: an 8-byte header (tag, seq as little-endian u32) and bytes that depend on
both, so a message in the wrong place, a stale buffer or a torn write is seen."""

import numpy as np


def payload(tag: int, seq: int, size: int) -> bytes:
    return expected(tag, seq, size).tobytes()


def expected(tag: int, seq: int, size: int) -> np.ndarray:
    body = (np.arange(size, dtype=np.uint32) * 7 + seq * 13 + tag * 101) % 251
    out = body.astype(np.uint8)
    head = np.array([tag, seq], dtype="<u4").view(np.uint8)
    n = min(8, size)
    out[:n] = head[:n]
    return out


def check(arr: np.ndarray, tag: int, seq: int) -> None:
    """Raises AssertionError unless ``arr`` is message ``seq`` of ``tag``."""
    want = expected(tag, seq, arr.size)
    if not np.array_equal(arr, want):
        bad = int(np.flatnonzero(arr != want)[0])
        raise AssertionError(f"tag {tag} seq {seq}: byte {bad} is {arr[bad]}, want {want[bad]}")


def header(arr: np.ndarray) -> tuple:
    tag, seq = arr[:8].view("<u4")
    return int(tag), int(seq)


def image(tag: int, seq: int) -> np.ndarray:
    """Typed sample ``seq`` of sender ``tag``: a float32 (3, 8, 8) image."""
    return (np.arange(3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8) * 0.5 + seq + tag * 1000.0)


def label(tag: int, seq: int) -> np.ndarray:
    """Its label: an int64 scalar."""
    return np.array(seq * 31 + tag, dtype=np.int64)


# The feeder tests' dataset (conftest's npy_dataset): 3 shards of (image, label) samples.
SHARDS = [20, 7, 13]  # samples per shard: 40 in all


def shard_image(shard: int, item: int) -> np.ndarray:
    return np.arange(48, dtype=np.float32).reshape(3, 4, 4) + shard * 1000 + item


def shard_label(shard: int, item: int) -> int:
    return shard * 100 + item
