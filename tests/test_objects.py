"""The content-addressed object store: lossless round trips, dedup, corruption and kills."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from provenance.errors import ObjectCorruptError, ObjectMissingError
from provenance.objects import ObjectStore, address_of

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.int32, torch.int8,
          torch.uint8, torch.bool]


def _random(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 100).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -(2**31)), min(info.max, 2**31 - 1), shape, generator=g, dtype=torch.int64).to(dtype)


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(DTYPES), shape=st.lists(st.integers(0, 7), min_size=0, max_size=3).map(tuple),
       seed=st.integers(0, 2**16))
def test_round_trip_is_bit_identical(tmp_path_factory, dtype, shape, seed):
    store = ObjectStore(tmp_path_factory.mktemp("objects"))
    t = _random(dtype, shape, seed)
    ref = store.put(t)
    back = store.get(ref.address)
    assert back.dtype == t.dtype and tuple(back.shape) == tuple(t.shape)
    assert back.reshape(-1).view(torch.uint8).tolist() == t.reshape(-1).view(torch.uint8).tolist()
    assert ref.nbytes == t.numel() * t.element_size()
    assert ref.dtype == str(dtype).removeprefix("torch.")


def test_address_covers_dtype_shape_and_bytes():
    t = torch.arange(6, dtype=torch.float32)
    expected = xxhash.xxh3_128(b"float32|(6,)|" + t.numpy().tobytes()).hexdigest()
    assert address_of(t) == expected
    assert address_of(t.reshape(2, 3)) != expected  # same bytes, other shape
    assert address_of(t.view(torch.int32)) != expected  # same bytes, other dtype
    assert address_of(t.reshape(2, 3).t()) == address_of(t.reshape(2, 3).t().contiguous())  # layout does not matter


def test_identical_tensors_are_stored_once(tmp_path):
    store = ObjectStore(tmp_path)
    a = torch.ones(1000)
    first = store.put(a)
    mtime = store.path(first.address).stat().st_mtime_ns
    second = store.put(a.clone())
    assert first.address == second.address and (first.created, second.created) == (True, False)
    assert list(store.addresses()) == [first.address]
    assert store.path(first.address).stat().st_mtime_ns == mtime  # not written again
    store.put(torch.zeros(1000))
    assert len(list(store.addresses())) == 2


@pytest.mark.parametrize("n", [100, 1 << 19], ids=["read", "memory-mapped"])
def test_corrupt_and_missing_objects_are_named(tmp_path, n):
    store = ObjectStore(tmp_path)
    ref = store.put(torch.arange(n, dtype=torch.float32))
    path = store.path(ref.address)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # flip one bit of the last value
    path.write_bytes(bytes(data))
    with pytest.raises(ObjectCorruptError, match=f"object {ref.address} .* is corrupt: its content hashes to"):
        store.get(ref.address)
    path.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(ObjectCorruptError, match="not a readable safetensors file.*do not fit"):
        store.get(ref.address)
    path.write_bytes(b"\xff" * 16)  # a header length past the end
    with pytest.raises(ObjectCorruptError, match="runs past the end"):
        store.get(ref.address)
    path.write_bytes(b"")
    with pytest.raises(ObjectCorruptError, match="truncated"):
        store.get(ref.address)
    path.write_bytes(bytes(data))
    assert store.delete(ref.address) == len(data) and not path.exists()
    with pytest.raises(ObjectMissingError, match=f"object {ref.address} is missing"):
        store.get(ref.address)
    assert store.delete(ref.address) == 0


_WRITER = """
import sys, torch
from provenance.objects import ObjectStore
store = ObjectStore(sys.argv[1])
print("ready", flush=True)
i = 0
while True:
    store.put(torch.full((2_000_000,), float(i)))
    i += 1
"""


@pytest.mark.slow
def test_killed_writer_leaves_only_whole_objects(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    time.sleep(1.5)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    store = ObjectStore(tmp_path)
    addresses = list(store.addresses())
    assert addresses, "the writer stored nothing before it was killed"
    for address in addresses:  # every visible object is whole and hashes to its address
        t = store.get(address)
        assert t.shape == (2_000_000,) and bool((t == t[0]).all())


def test_a_failed_write_removes_only_objects_no_other_write_may_use(ledger):
    """A failed write removes what it added, unless another write of the process began beside it:
    that one may have found the object there and kept a version using it (the review of the
    change that gave merges and stored Fishers this clean-up)."""
    from provenance.objects import new_objects

    store, writers = ledger.object_store(), ledger.object_writers
    before = store.put(torch.arange(3.0)).address  # stored before: never removed by a failed write
    with pytest.raises(RuntimeError, match="refused"):
        with new_objects(store, writers) as added:
            alone = added.put(torch.arange(4.0)).address
            assert added.put(torch.arange(3.0)).created is False and added.created == [alone]
            raise RuntimeError("refused")
    with pytest.raises(ObjectMissingError):
        store.get(alone)
    assert torch.equal(store.get(before), torch.arange(3.0))
    with pytest.raises(RuntimeError, match="refused"):
        with new_objects(store, writers) as first:
            shared = first.put(torch.arange(5.0)).address
            with new_objects(store, writers) as second:  # begins, finds it there, ends (its version kept)
                assert second.put(torch.arange(5.0)).created is False
            raise RuntimeError("refused")
    assert torch.equal(store.get(shared), torch.arange(5.0))
