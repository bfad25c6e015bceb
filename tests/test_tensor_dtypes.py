"""Every dtype torch and safetensors share, FP8 included, committed and checked out bit for bit
(state dicts and files on disk, parents and sparse or full children); the finiteness check on FP8;
and the tensors a commit refuses by name (complex, meta, sparse layouts, quantized), leaving the
ledger as it was."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from provenance.errors import InvalidParameterError, NonFiniteError
from provenance.kernels import patch as P
from provenance.kernels.dispatch import backend
from provenance.objects import ObjectStore
from provenance.patches import changed_mask

FP8 = [torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz]
if hasattr(torch, "float8_e8m0fnu"):
    FP8.append(torch.float8_e8m0fnu)
DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32,
          torch.uint64, torch.float16, torch.bfloat16, torch.float32, torch.float64, *FP8]
# The safetensors header name of each dtype (the names safetensors itself writes).
ST_NAMES = {torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.int32: "I32",
            torch.int64: "I64", torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64", torch.float16: "F16",
            torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64", torch.float8_e4m3fn: "F8_E4M3",
            torch.float8_e5m2: "F8_E5M2", torch.float8_e4m3fnuz: "F8_E4M3FNUZ", torch.float8_e5m2fnuz: "F8_E5M2FNUZ"}
if hasattr(torch, "float8_e8m0fnu"):
    ST_NAMES[torch.float8_e8m0fnu] = "F8_E8M0"
# FP8 bit patterns that are NaN or Inf: how many of the 256 there are, and the smallest.
FP8_NONFINITE = {torch.float8_e4m3fn: (2, 0x7F), torch.float8_e5m2: (8, 0x7C), torch.float8_e4m3fnuz: (1, 0x80),
                 torch.float8_e5m2fnuz: (1, 0x80)}
if hasattr(torch, "float8_e8m0fnu"):
    FP8_NONFINITE[torch.float8_e8m0fnu] = (1, 0xFF)
_INT_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bytes(t: torch.Tensor) -> list[int]:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).tolist()


def _random(dtype: torch.dtype, n: int, seed: int) -> torch.Tensor:
    """``n`` elements of random bits (NaN payloads and infinities included), 0 or 1 for bool."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, (n,), generator=g).bool()
    return torch.randint(0, 256, (n * dtype.itemsize,), dtype=torch.uint8, generator=g).view(dtype)


def _change(t: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """A copy of ``t`` with about ``fraction`` of its elements set to other bits."""
    g = torch.Generator().manual_seed(seed)
    out = t.clone()
    ints = out.view(-1).view(_INT_OF_WIDTH[t.itemsize])
    where = torch.rand(t.numel(), generator=g) < fraction
    where[0] = True
    if t.dtype == torch.bool:
        ints[where] = 1 - ints[where]
    else:
        ints[where] = ints[where] ^ 0x5A  # flips bits of the low byte: a different value
    return out


def _ledger_is_empty(ledger) -> None:
    store = ObjectStore(ledger.objects_path)
    assert ledger.versions() == []
    assert list(store.addresses()) == [] and list(store.temporaries()) == []


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_round_trips_through_sparse_and_full_children(ledger, dtype):
    parent = _random(dtype, 4096, seed=1).reshape(64, 64)
    sparse_child = _change(parent, 0.01, seed=2)
    full_child = _change(sparse_child, 0.9, seed=3)
    v0 = ledger.commit({"w": parent, "b": _random(dtype, 7, seed=4)}, message="root", allow_nonfinite=True)
    v1 = ledger.commit({"w": sparse_child, "b": _random(dtype, 7, seed=4)}, parent=v0, message="a few",
                       allow_nonfinite=True)
    v2 = ledger.commit({"w": full_child, "b": _random(dtype, 7, seed=5)}, parent=v1, message="most",
                       allow_nonfinite=True)
    assert [ledger.manifest(v)["w"].encoding for v in (v0, v1, v2)] == ["full", "sparse", "full"]
    assert ledger.manifest(v1)["b"].encoding == "unchanged"
    assert ledger.manifest(v2)["w"].dtype == str(dtype).removeprefix("torch.")
    for version, expected in ((v0, parent), (v1, sparse_child), (v2, full_child)):
        out = ledger.checkout(version)["w"]
        assert out.dtype == dtype and out.shape == (64, 64)
        assert _bytes(out) == _bytes(expected)
    assert _bytes(ledger.checkout(v2)["b"]) == _bytes(_random(dtype, 7, seed=5))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_round_trips_through_safetensors_files(ledger, tmp_path, dtype):
    parent = {"layer.weight": _random(dtype, 300, seed=6).reshape(20, 15), "layer.bias": _random(dtype, 20, seed=7)}
    child = {"layer.weight": _change(parent["layer.weight"], 0.02, seed=8), "layer.bias": parent["layer.bias"]}
    save_file(parent, tmp_path / "parent.safetensors")
    save_file(child, tmp_path / "child.safetensors")
    v0 = ledger.commit(tmp_path / "parent.safetensors", message="from a file", allow_nonfinite=True)
    v1 = ledger.commit(tmp_path / "child.safetensors", parent=v0, message="from a file", allow_nonfinite=True)
    assert ledger.manifest(v1)["layer.weight"].encoding == "sparse"
    for version, expected in ((v0, parent), (v1, child)):
        out = ledger.checkout(version, output=tmp_path / f"{version.version_id}.safetensors")
        raw = out.read_bytes()
        head = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])
        assert head["layer.weight"]["dtype"] == ST_NAMES[dtype]
        back = load_file(out)  # read by safetensors itself
        assert sorted(back) == sorted(expected)
        for name in expected:
            assert back[name].dtype == dtype and back[name].shape == expected[name].shape
            assert _bytes(back[name]) == _bytes(expected[name]), name


@pytest.mark.parametrize("dtype", FP8, ids=str)
def test_fp8_nan_and_inf_are_refused_by_name_or_kept_bit_for_bit(ledger, dtype):
    every = torch.arange(256, dtype=torch.int64).to(torch.uint8).view(dtype)  # all 256 bit patterns
    count, first = FP8_NONFINITE[dtype]
    with pytest.raises(NonFiniteError, match=rf"'w' holds {count} NaN or Inf values \(first at flat index {first}\); "
                                             "pass allow_nonfinite=True to store them") as caught:
        ledger.commit({"w": every}, message="nan")
    assert caught.value.parameter == "w"
    _ledger_is_empty(ledger)
    finite = every[torch.isfinite(every.float())]
    assert finite.numel() == 256 - count
    v0 = ledger.commit({"w": finite}, message="finite")  # no flag needed
    assert _bytes(ledger.checkout(v0)["w"]) == _bytes(finite)
    v1 = ledger.commit({"w": every}, message="every payload", allow_nonfinite=True)
    assert _bytes(ledger.checkout(v1)["w"]) == list(range(256))


def test_fp8_nonfinite_beyond_the_first_chunk_is_found(ledger):
    big = torch.zeros(5_000_000, dtype=torch.uint8).view(torch.float8_e5m2)  # more than one widened chunk
    bits = big.view(torch.uint8)
    bits[4_500_001] = 0x7C  # +Inf
    bits[4_900_000] = 0xFE  # a NaN
    with pytest.raises(NonFiniteError, match=r"'big' holds 2 NaN or Inf values \(first at flat index 4500001\)"):
        ledger.commit({"big": big}, message="inf")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, None])
def test_the_finiteness_scan_of_each_float_dtype(ledger, dtype, bad):
    """The commit's single-threaded scan (kernels/finite.py) finds a NaN or an Inf anywhere, the
    last element included, and passes the largest finite values and subnormals."""
    from provenance.kernels.finite import all_finite

    info = torch.finfo(dtype)
    t = torch.tensor([0.0, -0.0, info.max, -info.max, info.tiny / 2, 1.0] * 1000 + [1.0], dtype=dtype)
    assert all_finite(t) is True
    if bad is None:
        assert ledger.commit({"w": t}, message="finite").version_id
        return
    t[-1] = bad
    assert all_finite(t) is False
    with pytest.raises(NonFiniteError, match=r"'w' holds 1 NaN or Inf values \(first at flat index 6000\)"):
        ledger.commit({"w": t}, message="not finite")
    assert all_finite(t[::2]) is None and all_finite(t.to(torch.float8_e4m3fn)) is None  # the caller checks those


def test_nonfinite_error_names_the_parameter_for_the_cli(ledger):
    t = torch.ones(10)
    t[4] = float("-inf")
    with pytest.raises(NonFiniteError) as caught:
        ledger.commit({"norm.weight": t}, message="inf")
    assert isinstance(caught.value, InvalidParameterError)
    assert caught.value.parameter == "norm.weight"
    assert str(caught.value) == ("parameter 'norm.weight' holds 1 NaN or Inf values (first at flat index 4); "
                                 "pass allow_nonfinite=True to store them")


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.uint16, torch.uint32, torch.uint64],
                         ids=str)
def test_sparse_bit_copies_of_fp8_and_wide_unsigned_on_both_backends(dtype):
    device = "cuda" if torch.cuda.is_available() else "cpu"  # Triton compiled, or its interpreter
    base = _random(dtype, 3000, seed=9)
    target = _change(base, 0.3, seed=10)
    indices = torch.nonzero(changed_mask(base, target)).reshape(-1).to(torch.int32)
    assert 500 < indices.numel() < 1500
    values = target[indices.long()]
    base, indices, values = base.to(device), indices.to(device), values.to(device)
    for name in ("triton", "torch"):
        with backend(name):
            assert _bytes(P.apply_sparse(base, indices, values).cpu()) == _bytes(target), name
            assert _bytes(P.apply_chain(base, [("sparse", indices, values)]).cpu()) == _bytes(target), name


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=str)
def test_complex_is_refused_naming_the_tensor_and_dtype(ledger, dtype):
    name = str(dtype).removeprefix("torch.")
    state = {"a": torch.randn(8), "rotary": torch.randn(4, dtype=dtype)}  # "a" is written before "rotary"
    with pytest.raises(InvalidParameterError, match=rf"^parameter 'rotary' is {name}, and complex tensors are not "
                                                     r"stored: commit torch.view_as_real\(tensor\)"):
        ledger.commit(state, message="complex")
    with pytest.raises(InvalidParameterError, match=rf"parameter 'rotary' is {name}, and complex"):
        ledger.commit({"a": torch.randn(8), "rotary": torch.randn(4, dtype=dtype).conj()}, message="conj view")
    _ledger_is_empty(ledger)
    real = torch.view_as_real(state["rotary"])  # the documented way to keep it, exactly
    v0 = ledger.commit({"rotary": real}, message="as real")
    back = ledger.checkout(v0)["rotary"]
    assert _bytes(back) == _bytes(state["rotary"])
    assert torch.equal(torch.view_as_complex(back.clone()), state["rotary"])


def test_complex_in_a_safetensors_file_is_refused_by_name(ledger, tmp_path):
    save_file({"freqs": torch.randn(3, dtype=torch.complex64), "w": torch.ones(2)}, tmp_path / "c.safetensors")
    with pytest.raises(InvalidParameterError, match="parameter 'freqs' is complex64, and complex tensors are not stored"):
        ledger.commit(tmp_path / "c.safetensors", message="complex file")
    _ledger_is_empty(ledger)


def _quantized() -> torch.Tensor:
    return torch.quantize_per_tensor(torch.randn(6), scale=0.1, zero_point=3, dtype=torch.qint8)


@pytest.mark.parametrize("make, message", [
    (lambda: torch.empty(3, 4, device="meta"), r"is a meta tensor \(shape \[3, 4\], no data\): load its values"),
    (lambda: torch.eye(4).to_sparse(), r"is a sparse_coo tensor: commit its dense form \(tensor.to_dense\(\)\)"),
    (lambda: torch.eye(4).to_sparse_csr(), r"is a sparse_csr tensor: commit its dense form"),
    (_quantized, r"is a quantized qint8 tensor \(per_tensor_affine\): its scales and zero points would "
                 r"be lost; commit tensor.dequantize\(\)"),
    (lambda: [1.0, 2.0], r"is a list, not a tensor"),
    (lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]),  # its shape raised a RuntimeError
     r"is a nested tensor \(tensors of different shapes\): commit each as a parameter of its own"),
    (lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)], layout=torch.jagged),
     r"is a nested tensor \(tensors of different shapes\)"),
], ids=["meta", "sparse_coo", "sparse_csr", "quantized", "list", "nested", "jagged"])
def test_tensors_without_a_dense_bit_exact_form_are_refused(ledger, make, message):
    v0 = ledger.commit({"keep": torch.arange(5.0)}, message="root")
    objects = sorted(ObjectStore(ledger.objects_path).addresses())
    for parent in (None, v0):  # a new root, or a child whose other parameters are written first
        with pytest.raises(InvalidParameterError, match=rf"^parameter 'z.weight' {message}"):
            ledger.commit({"a": torch.randn(16), "z.weight": make()}, parent=parent, message="bad")
    assert ledger.versions() == [v0]
    assert sorted(ObjectStore(ledger.objects_path).addresses()) == objects
    assert list(ObjectStore(ledger.objects_path).temporaries()) == []


@pytest.mark.skipif(not hasattr(torch, "float4_e2m1fn_x2"), reason="torch has no float4_e2m1fn_x2")
def test_a_dtype_without_a_safetensors_name_here_is_refused(ledger):
    packed = torch.zeros(4, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)
    with pytest.raises(InvalidParameterError, match=r"^parameter 'w' is float4_e2m1fn_x2, which the object store "
                                                    r"cannot hold \(it holds bfloat16, bool, "):
        ledger.commit({"w": packed}, message="fp4")
    _ledger_is_empty(ledger)


def test_a_negative_view_is_stored_as_the_values_it_shows(ledger):
    t = torch.tensor([1.5, -2.0, 0.0, 3.25])
    neg = torch._neg_view(t)
    assert neg.is_neg()
    v0 = ledger.commit({"w": neg}, message="neg view")
    assert _bytes(ledger.checkout(v0)["w"]) == _bytes(torch.tensor([-1.5, 2.0, -0.0, -3.25]))


def test_the_object_store_itself_refuses_what_it_cannot_hold(tmp_path):
    store = ObjectStore(tmp_path / "objects")
    with pytest.raises(InvalidParameterError, match=r"^cannot store a tensor that is complex64, and complex tensors"):
        store.put(torch.randn(3, dtype=torch.complex64))
    with pytest.raises(InvalidParameterError, match=r"^cannot store a tensor that is a meta tensor \(shape \[2\]"):
        store.put(torch.empty(2, device="meta"))
    assert list(store.addresses()) == [] and not (tmp_path / "objects").exists()
