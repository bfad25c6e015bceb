"""The patch kernels: the Triton kernels (on CPU through its interpreter) and the torch path against
each other, against the patch definitions and against naive float64 formulas; chains of mixed
patches against applying them one by one; bad input."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton or the kernels are imported

import math  # noqa: E402
import random  # noqa: E402
import zlib  # noqa: E402

import pytest  # noqa: E402

from provenance.kernels import patch as P  # noqa: E402
from provenance.kernels.dispatch import backend  # noqa: E402
from provenance.patches import same_bits  # noqa: E402

F32, BF16, F16, F64 = torch.float32, torch.bfloat16, torch.float16, torch.float64
I32, I64 = torch.int32, torch.int64
TOL = {F64: {"rtol": 1e-12, "atol": 1e-12}, F32: {"rtol": 1e-5, "atol": 1e-5}, BF16: {"rtol": 1e-2, "atol": 1e-2}, F16: {"rtol": 2e-3, "atol": 2e-3}}
SHAPES = [(1,), (7,), (1000,), (33, 17), (0,), (0, 5)]
MATRIX = {(1,): (1, 1), (7,): (1, 7), (1000,): (40, 25), (0,): (5, 0)}  # a 2-D shape of each size, for low rank
DTYPES = [F32, BF16, F16]
NAMES = ["triton", "torch"]


def gen(*key) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def numel(shape) -> int:
    return math.prod(shape)


def sparse_parts(shape, dtype, g, density=0.3, index_dtype=I32):
    """Sorted unique flat indices (at least one when the tensor has elements) and new values."""
    n = numel(shape)
    k = max(int(density * n), min(n, 1))
    indices = torch.randperm(n, generator=g)[:k].sort().values.to(index_dtype)
    return indices, torch.randn(k, generator=g).to(dtype)


def factors(shape, rank, g):
    return torch.randn(shape[0], rank, generator=g), torch.randn(rank, shape[1], generator=g), 0.3 + torch.rand(1, generator=g).item()


def clones(*tensors):
    return [t.clone() for t in tensors]


def unchanged(before, after) -> bool:
    return all(same_bits(x, y) for x, y in zip(before, after))


def poison(shape, dtype):
    return torch.full(shape, math.nan, dtype=dtype)


# ---- apply_sparse --------------------------------------------------------------------------------


@pytest.mark.parametrize("index_dtype", [I32, I64], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_apply_sparse(shape, dtype, index_dtype):
    g = gen("sparse", shape, dtype, index_dtype)
    base = torch.randn(shape, generator=g).to(dtype)
    indices, values = sparse_parts(shape, dtype, g, index_dtype=index_dtype)
    expected = base.double().reshape(-1).clone()
    expected[indices.long()] = values.double()
    expected = expected.reshape(shape)
    before = clones(base, indices, values)
    for name in NAMES:
        with backend(name):
            got = P.apply_sparse(base, indices, values)
        assert got.shape == shape and got.dtype == dtype and got.is_contiguous()
        assert torch.equal(got.double(), expected)  # replacement: exact
        assert unchanged(before, [base, indices, values])
        target = base.clone()
        with backend(name):
            assert P.apply_sparse(target, indices, values, inplace=True) is target
        assert same_bits(target, got)


@pytest.mark.parametrize("dtype", [F64, I32, I64, torch.int16, torch.int8, torch.uint8, torch.bool], ids=str)
def test_apply_sparse_is_a_bit_copy_for_every_dtype(dtype):
    g = gen("sparse dtypes", dtype)
    base = torch.randint(0, 2 if dtype == torch.bool else 100, (3000,), generator=g).to(dtype)
    indices, _ = sparse_parts((3000,), F32, g, density=0.4)
    values = torch.randint(0, 2 if dtype == torch.bool else 100, (len(indices),), generator=g).to(dtype)
    expected = base.clone()
    expected[indices.long()] = values
    for name in NAMES:
        with backend(name):
            assert same_bits(P.apply_sparse(base, indices, values), expected)
            assert same_bits(P.apply_chain(base, [("sparse", indices, values)], out=torch.empty_like(base)), expected)


@pytest.mark.parametrize("dtype", [F32, BF16, F16, F64], ids=str)
def test_sparse_values_keep_negative_zero_inf_and_nan_payloads(dtype):
    base = torch.ones(2500, dtype=dtype)
    indices = torch.tensor([0, 1, 2, 1023, 1024, 2499], dtype=I32)
    values = torch.tensor([-0.0, math.inf, -math.inf, math.nan, 0.0, -1.5], dtype=dtype)
    bits = values.view(P._BITS[dtype.itemsize])
    bits[3] = bits[3] | 1  # a NaN with a payload
    expected = base.clone()
    expected[indices.long()] = values
    for name in NAMES:
        with backend(name):
            assert same_bits(P.apply_sparse(base, indices, values), expected)
            # after a dense patch (the chain's float path) the sparse values still land as bits
            chain = [("dense", torch.zeros_like(base)), ("sparse", indices, values)]
            assert same_bits(P.apply_chain(base, chain, out=poison((2500,), dtype)), expected)


@pytest.mark.parametrize("dtype", [F32, BF16, F64], ids=str)
def test_sparse_only_chain_overlapping_patches_in_order(dtype):
    """A chain of sparse patches only (a copy, then each patch scattered in order on the Triton
    path): where two patches touch one position the later wins, into a poisoned output, into the
    base itself, and with an empty patch among them."""
    g = gen("sparse chain", dtype)
    base = torch.randint(0, 100, (5000,), generator=g).to(dtype)
    first, _ = sparse_parts((5000,), F32, g, density=0.3)
    second, _ = sparse_parts((5000,), F32, g, density=0.3, index_dtype=I64)
    chain = [("sparse", first, torch.randint(100, 200, (len(first),), generator=g).to(dtype)),
             ("sparse", first[:0], torch.zeros(0, dtype=dtype)),
             ("sparse", second, torch.randint(200, 300, (len(second),), generator=g).to(dtype))]
    assert len(set(first.tolist()) & set(second.tolist())) > 100
    expected = base.clone()
    for _, idx, vals in chain:
        expected[idx.long()] = vals
    for name in NAMES:
        with backend(name):
            assert same_bits(P.apply_chain(base, chain, out=poison((5000,), dtype)), expected)
            inplace = base.clone()
            assert P.apply_chain(inplace, chain, out=inplace) is inplace and same_bits(inplace, expected)


# ---- apply_dense_delta ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [*DTYPES, F64], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_apply_dense_delta(shape, dtype):
    g = gen("dense", shape, dtype)
    base, delta = torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)
    acc = F64 if dtype == F64 else F32
    definition = (base.to(acc) + delta.to(acc)).to(dtype)  # added in float32, rounded once
    before = clones(base, delta)
    for name in NAMES:
        with backend(name):
            got = P.apply_dense_delta(base, delta)
        assert got.shape == shape and got.dtype == dtype and not got.isnan().any()
        assert same_bits(got, definition)
        torch.testing.assert_close(got.double(), base.double() + delta.double(), **TOL[dtype])
        assert unchanged(before, [base, delta])
        target = base.clone()
        with backend(name):
            assert P.apply_dense_delta(target, delta, inplace=True) is target
        assert same_bits(target, definition)


# ---- apply_low_rank ------------------------------------------------------------------------------


def low_rank_definition(base, b, a, scale):
    """How the low-rank patch was defined when versions were first committed with it."""
    return (base.float() + (b.float() @ a.float()) * float(scale)).to(base.dtype)


@pytest.mark.parametrize("rank", [0, 1, 4])
@pytest.mark.parametrize("dtype", [*DTYPES, F64], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_apply_low_rank_is_the_committed_definition_on_every_backend(shape, dtype, rank):
    shape = MATRIX.get(shape, shape)
    g = gen("low rank", shape, dtype, rank)
    base = torch.randn(shape, generator=g).to(dtype)
    b, a, scale = factors(shape, rank, g)
    definition = low_rank_definition(base, b, a, scale)
    naive = base.double() + scale * (b.double() @ a.double())
    before = clones(base, b, a)
    for name in NAMES:
        for s in (scale, 1.0):
            with backend(name):
                got = P.apply_low_rank(base, b, a, s)
            assert same_bits(got, low_rank_definition(base, b, a, s))
        assert unchanged(before, [base, b, a])
    # float32 accumulation, float64 bases included (that is how the patch was defined)
    torch.testing.assert_close(definition.double(), naive, **TOL[F32 if dtype == F64 else dtype])


@pytest.mark.parametrize("dtype", [BF16, I64], ids=str)
def test_apply_low_rank_on_other_factor_and_base_dtypes(dtype):
    g = gen("low rank dtypes", dtype)
    base = (torch.randn(9, 6, generator=g) * 50).to(dtype)
    b, a = torch.randn(9, 2, generator=g).to(F16), torch.randn(2, 6, generator=g).to(BF16)
    for name in NAMES:
        with backend(name):
            assert same_bits(P.apply_low_rank(base, b, a, 0.7), low_rank_definition(base, b, a, 0.7))
            assert same_bits(P.apply_low_rank(base.t(), a.t(), b.t(), 0.7), low_rank_definition(base.t(), a.t(), b.t(), 0.7))


# ---- apply_full ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_apply_full(shape, dtype):
    g = gen("full", shape, dtype)
    base, full = torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)
    for name in NAMES:
        with backend(name):
            got = P.apply_full(base, full)
        assert same_bits(got, full) and (not full.numel() or got.data_ptr() != full.data_ptr())


# ---- apply_chain ---------------------------------------------------------------------------------


def random_chain(shape, dtype, rng: random.Random, g, length):
    """``length`` random patches: sparse (dense or thin), dense, low rank (2-D only), now and then full."""
    kinds = ["sparse", "dense"] + (["low_rank"] if len(shape) == 2 else [])
    chain = []
    for _ in range(length):
        kind = "full" if rng.random() < 0.08 else rng.choice(kinds)
        if kind == "sparse":
            density = rng.choice([0.01, 0.3, 1.0])
            chain.append(("sparse", *sparse_parts(shape, dtype, g, density, rng.choice([I32, I64]))))
        elif kind == "dense":
            chain.append(("dense", (torch.randn(shape, generator=g) * 0.5).to(dtype)))
        elif kind == "low_rank":
            chain.append(("low_rank", *factors(shape, rng.choice([1, 2, 5]), g)))
        else:
            chain.append(("full", torch.randn(shape, generator=g).to(dtype)))
    if "low_rank" in kinds and not any(p[0] == "low_rank" for p in chain):  # every 2-D chain has one
        chain[rng.randrange(length)] = ("low_rank", *factors(shape, rng.choice([1, 3]), g))
    return chain


def one_by_one(base, chain):
    """The chain applied patch by patch with the public functions, on the torch path."""
    out = base
    with backend("torch"):
        for kind, *parts in chain:
            out = {"sparse": P.apply_sparse, "dense": P.apply_dense_delta, "low_rank": P.apply_low_rank,
                   "full": P.apply_full}[kind](out, *parts)
    return out


def naive_chain(base, chain):
    """The chain in float64, rounded to the dtype after each patch as the patch functions round."""
    x = base.double().reshape(-1)
    for kind, *parts in chain:
        if kind == "sparse":
            x = x.clone()
            x[parts[0].long()] = parts[1].double()
        elif kind == "dense":
            x = x + parts[0].double().reshape(-1)
        elif kind == "low_rank":
            b, a, scale = parts
            x = x + scale * (b.double() @ a.double()).reshape(-1)
        else:
            x = parts[0].double().reshape(-1)
        x = x.to(base.dtype).double()
    return x.reshape(base.shape)


def tensors_of(chain):
    return [t for p in chain for t in p[1:] if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [*SHAPES, (40, 25)], ids=str)
def test_chain_equals_the_patches_one_by_one(shape, dtype, seed):
    rng, g = random.Random(zlib.crc32(repr((shape, dtype, seed)).encode())), gen("chain", shape, dtype, seed)
    base = torch.randn(shape, generator=g).to(dtype)
    chain = random_chain(shape, dtype, rng, g, rng.randint(1, 6))
    before = clones(base, *tensors_of(chain))
    expected = one_by_one(base, chain)
    for name in NAMES:
        for exact in (True, False):
            out = poison(shape, dtype)  # every element must be written
            with backend(name):
                got = P.apply_chain(base, chain, out=out, exact=exact)
            assert got is out and not got.isnan().any()
            if exact or name == "torch" or not any(p[0] == "low_rank" for p in chain):
                assert same_bits(got, expected), (name, exact, [p[0] for p in chain])
            else:  # low rank summed by the kernel from the factors: within rounding
                torch.testing.assert_close(got, expected, **TOL[dtype])
            assert unchanged(before, [base, *tensors_of(chain)])
    torch.testing.assert_close(expected.double(), naive_chain(base, chain), **TOL[dtype])


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_later_sparse_values_win_exactly(name, exact):
    g = gen("overlap")
    shape = (40, 60)
    base = torch.randn(shape, generator=g).to(BF16)
    dense = torch.randn(shape, generator=g).to(BF16)
    b, a, scale = factors(shape, 3, g)
    first = sparse_parts(shape, BF16, g, density=0.5)
    second = sparse_parts(shape, BF16, g, density=0.2)
    chain = [("dense", dense), ("sparse", *first), ("low_rank", b, a, scale), ("sparse", *second), ("dense", dense),
             ("sparse", *second)]
    with backend(name):
        got = P.apply_chain(base, chain, exact=exact)
    assert torch.equal(got.view(-1)[second[0].long()].view(torch.int16), second[1].view(torch.int16))
    only_first = torch.ones(got.numel(), dtype=torch.bool)
    only_first[second[0].long()] = False
    only_first &= torch.isin(torch.arange(got.numel()), first[0].long())
    # where only the first sparse patch hit, the low-rank and dense patches after it were added to its values
    torch.testing.assert_close(got.view(-1)[only_first], one_by_one(base, chain).view(-1)[only_first], **TOL[BF16])


@pytest.mark.parametrize("name", NAMES)
def test_the_last_full_patch_replaces_everything_before_it(name):
    g = gen("full chain")
    base, full, d1, d2 = (torch.randn(30, 20, generator=g) for _ in range(4))
    b, a, scale = factors((30, 20), 2, g)
    idx, vals = sparse_parts((30, 20), F32, g)
    with backend(name):
        assert same_bits(P.apply_chain(base, [("dense", d1), ("sparse", idx, vals), ("full", full)]), full)
        got = P.apply_chain(base, [("low_rank", b, a, scale), ("full", d1), ("full", full), ("dense", d2)])
        assert same_bits(got, P.apply_dense_delta(full, d2))
        assert same_bits(P.apply_chain(base, []), base)


@pytest.mark.parametrize("name", NAMES)
def test_chain_in_place_on_the_base(name):
    g = gen("in place")
    base = torch.randn(50, 30, generator=g).to(F16)
    chain = random_chain((50, 30), F16, random.Random(1), g, 5)
    expected = one_by_one(base, chain)
    with backend(name):
        assert P.apply_chain(base, chain, out=base) is base
    assert same_bits(base, expected)


@pytest.mark.parametrize("name", NAMES)
def test_long_chain_over_several_blocks_and_launches(name):
    """Nine patches (three launches of the kernel) on four blocks, sparse entries on the blocks'
    edges and a sparse patch that replaces every element."""
    g = gen("long")
    shape = (3, 1100)
    n = numel(shape)
    base = torch.randn(shape, generator=g).to(BF16)
    edges = torch.tensor([0, 1023, 1024, 1025, 2047, 2048, 3071, 3072, n - 1], dtype=I64)
    chain = random_chain(shape, BF16, random.Random(7), g, 7)
    chain.insert(2, ("sparse", edges, torch.randn(len(edges), generator=g).to(BF16)))
    chain.insert(5, ("sparse", torch.arange(n, dtype=I32), torch.randn(n, generator=g).to(BF16)))
    expected = one_by_one(base, chain)
    with backend(name):
        assert same_bits(P.apply_chain(base, chain, out=poison(shape, BF16)), expected)
        torch.testing.assert_close(P.apply_chain(base, chain, exact=False), expected, **TOL[BF16])


def test_non_contiguous_base_is_read_through_its_strides():
    g = gen("strided")
    base = torch.randn(17, 33, generator=g).t()
    chain = random_chain((33, 17), F32, random.Random(3), g, 4)
    expected = one_by_one(base.contiguous(), chain)
    for name in NAMES:
        with backend(name):
            assert same_bits(P.apply_chain(base, chain), expected)
            assert same_bits(P.apply_sparse(base, *sparse_parts((33, 17), F32, gen("s"))),
                             P.apply_sparse(base.contiguous(), *sparse_parts((33, 17), F32, gen("s"))))


# ---- bad input -----------------------------------------------------------------------------------

Z, M = torch.zeros(12), torch.zeros(3, 4)
BAD = {
    "index range": (lambda: P.apply_sparse(Z, torch.tensor([3, 12]), torch.zeros(2)), IndexError,
                    r"sparse index 12 out of range for a tensor of 12 elements"),
    "negative index": (lambda: P.apply_sparse(Z, torch.tensor([-1, 3], dtype=I32), torch.zeros(2)), IndexError,
                       r"sparse index -1 out of range"),
    "index dtype": (lambda: P.apply_sparse(Z, torch.tensor([1.0]), torch.zeros(1)), TypeError, r"int32 or int64, got torch.float32"),
    "values shape": (lambda: P.apply_sparse(Z, torch.tensor([1, 2, 3]), torch.zeros(2)), ValueError,
                     r"sparse indices \(3,\) and values \(2,\) must be equal 1-D"),
    "values dtype": (lambda: P.apply_sparse(Z, torch.tensor([1]), torch.zeros(1, dtype=F16)), TypeError,
                     r"sparse values have dtype torch.float16, the base torch.float32"),
    "inplace strided": (lambda: P.apply_sparse(torch.ones(4, 6).t(), torch.tensor([1]), torch.ones(1), inplace=True),
                        ValueError, r"base of shape \(6, 4\) has strides \(1, 6\): not contiguous"),
    "dense shape": (lambda: P.apply_dense_delta(Z, torch.zeros(4)), ValueError, r"dense delta has shape \(4,\), the base \(12,\)"),
    "dense dtype": (lambda: P.apply_dense_delta(Z, torch.zeros(12, dtype=BF16)), TypeError,
                    r"dense delta has dtype torch.bfloat16, the base torch.float32"),
    "dense int": (lambda: P.apply_dense_delta(Z.long(), Z.long()), TypeError, r"float base .* got torch.int64"),
    "dense strided": (lambda: P.apply_dense_delta(torch.zeros(4, 6), torch.zeros(6, 4).t()), ValueError,
                      r"dense delta of shape \(4, 6\) has strides \(1, 4\): not contiguous"),
    "low-rank shapes": (lambda: P.apply_low_rank(M, torch.zeros(3, 2), torch.zeros(2, 5), 1.0), ValueError,
                        r"factors B \(3, 2\) and A \(2, 5\) do not make the base's shape \(3, 4\)"),
    "low-rank 1-D": (lambda: P.apply_low_rank(Z, torch.zeros(12, 1), torch.zeros(1, 1), 1.0), ValueError,
                     r"needs a 2-D base, got shape \(12,\)"),
    "full": (lambda: P.apply_full(Z, torch.zeros(4)), ValueError,
             r"full tensor torch.float32\(4,\) does not match the base torch.float32\(12,\)"),
    "kind": (lambda: P.apply_chain(Z, [("dense", Z), ("zip", Z)]), ValueError,
             r"patches\[1\] has unknown kind 'zip'; one of sparse, dense, low_rank, full"),
    "arity": (lambda: P.apply_chain(Z, [("sparse", torch.tensor([1]))]), ValueError,
              r"patches\[0\] \('sparse'\) has 1 parts, not 2: \('sparse', indices, values\)"),
    "not a tuple": (lambda: P.apply_chain(Z, [Z]), ValueError, r"patches\[0\] is Tensor"),
    "chain index": (lambda: P.apply_chain(Z, [("dense", Z), ("sparse", torch.tensor([99]), torch.zeros(1))]), IndexError,
                    r"patches\[1\]: sparse index 99 out of range for a tensor of 12 elements"),
    "chain dense": (lambda: P.apply_chain(M, [("dense", Z)]), ValueError, r"patches\[0\]: dense delta has shape \(12,\), the base \(3, 4\)"),
    "chain low rank": (lambda: P.apply_chain(Z, [("low_rank", Z[:, None], Z[None, :1], 1.0)]), ValueError,
                       r"patches\[0\]: a low-rank patch needs a 2-D base, got shape \(12,\)"),
    "chain full": (lambda: P.apply_chain(M, [("full", M.half())]), ValueError,
                   r"patches\[0\]: full tensor torch.float16\(3, 4\) does not match the base torch.float32\(3, 4\)"),
    "out dtype": (lambda: P.apply_chain(Z, [], out=torch.empty(12, dtype=F16)), ValueError,
                  r"out is torch.float16\(12,\) on cpu, the base torch.float32\(12,\) on cpu"),
    "out strided": (lambda: P.apply_chain(torch.zeros(2, 6), [], out=torch.empty(6, 2).t()), ValueError,
                    r"out of shape \(2, 6\) has strides \(1, 2\): not contiguous"),
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_with_the_numbers(case, name):
    call, error, message = BAD[case]
    with backend(name), pytest.raises(error, match=message):
        call()


# ---- on a GPU ------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestOnGPU:
    """The compiled kernels at a realistic size (several million elements) against the torch path."""

    SHAPE = (4096, 1031)

    @pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=str)
    def test_single_patches_equal_the_torch_path(self, dtype):
        g = gen("gpu single", dtype)
        base, delta = (torch.randn(self.SHAPE, generator=g).to(dtype).cuda() for _ in range(2))
        indices, values = (t.cuda() for t in sparse_parts(self.SHAPE, dtype, g, density=0.02))
        fast = [P.apply_sparse(base, indices, values), P.apply_dense_delta(base, delta)]
        with backend("torch"):
            slow = [P.apply_sparse(base, indices, values), P.apply_dense_delta(base, delta)]
        assert all(f.is_cuda and same_bits(f, s) for f, s in zip(fast, slow))

    @pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
    def test_chain_equals_the_torch_path(self, dtype):
        g = gen("gpu chain", dtype)
        base = torch.randn(self.SHAPE, generator=g).to(dtype).cuda()
        chain = [(p[0], *(t.cuda() if isinstance(t, torch.Tensor) else t for t in p[1:]))
                 for p in random_chain(self.SHAPE, dtype, random.Random(5), g, 6)]
        chain.append(("low_rank", *(t.cuda() for t in factors(self.SHAPE, 8, g)[:2]), 0.5))
        with backend("torch"):
            slow = P.apply_chain(base, chain)
        assert same_bits(P.apply_chain(base, chain), slow)
        torch.testing.assert_close(P.apply_chain(base, chain, exact=False), slow, **TOL[dtype])


    @pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
    def test_large_low_rank_patch_equals_the_chains_exact_path(self, dtype):
        """Past LOW_RANK_WHOLE elements: ``apply_low_rank`` and the chain kernel's exact path make
        the same bits on CUDA (both take the whole GEMM there)."""
        g = gen("gpu large low rank", dtype)
        shape = (8192, 2051)
        assert shape[0] * shape[1] > P.LOW_RANK_WHOLE
        base = torch.randn(shape, generator=g).to(dtype).cuda()
        b, a = (t.cuda() for t in factors(shape, 8, g)[:2])
        assert same_bits(P.apply_low_rank(base, b, a, 0.5), P.apply_chain(base, [("low_rank", b, a, 0.5)]))


@pytest.mark.parametrize("shape", [(256, 3), (600, 129), (1031, 64), (2048, 7)])
@pytest.mark.parametrize("rank", [1, 8, 33])
def test_low_rank_by_blocks_of_rows_is_the_whole_gemm(monkeypatch, shape, rank):
    """Large low-rank updates are made block of rows by block (never the whole float32 B @ A); with
    blocks of at least 256 rows torch's GEMM gives the same bits as the whole product."""
    from provenance.kernels import patch as p
    from provenance.kernels import patch_torch  # where the torch path reads its block sizes

    g = torch.Generator().manual_seed(shape[0] + rank)
    base = torch.randn(shape, generator=g)
    b, a = torch.randn(shape[0], rank, generator=g), torch.randn(rank, shape[1], generator=g)
    whole = base + (b @ a) * 0.75
    monkeypatch.setattr(patch_torch, "LOW_RANK_WHOLE", 0)
    monkeypatch.setattr(patch_torch, "ROW_BLOCK_ELEMENTS", 1)  # blocks of 256 rows
    blocks = list(p.row_blocks(*shape))
    assert blocks[0][0] == 0 and blocks[-1][1] == shape[0] and all(r1 - r0 >= 256 for r0, r1 in blocks)
    out = torch.full_like(base, float("nan"))
    assert torch.equal(p.apply_chain(base, [("low_rank", b, a, 0.75)], out=out), whole)
    assert torch.equal(p.apply_low_rank(base, b, a, 0.75), whole)
    inplace = base.clone()
    p.apply_chain(inplace, [("low_rank", b, a, 0.75)], out=inplace)
    assert torch.equal(inplace, whole)
