"""The torch-tensor MinHash (Triton kernel, on CPU through its interpreter, and the torch path)
equals the numba CPU path bit for bit, on edge values, real texts and random batches; bad input."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton or the kernels are imported

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import xxhash  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from provenance import FingerprintConfig  # noqa: E402
from provenance.errors import InvalidParameterError  # noqa: E402
from provenance.fingerprints import _permutations  # noqa: E402
from provenance.kernels import minhash as k  # noqa: E402
from provenance.kernels import minhash_gpu as g  # noqa: E402
from provenance.kernels.dispatch import backend  # noqa: E402

SCHEMES = {"affine32": k.SCHEME_AFFINE32, "legacy": k.SCHEME_LEGACY}
BACKENDS = ["torch", "triton"]
EDGE_HASHES = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]


def perms(scheme, num_perm, seed=1):
    """``FingerprintConfig(scheme=..., num_perm=..., seed=...).permutations``, also for a
    ``num_perm`` too small for the config's LSH banding (1 permutation)."""
    return _permutations(scheme, num_perm, seed)


def as_tensors(hashes, offsets, a, b, device="cpu"):
    """The numba path's arrays as the int64 tensors :func:`g.signatures` takes (bit patterns)."""
    def t(x):
        x = np.asarray(x)
        return torch.from_numpy(x.view(np.int64) if x.dtype == np.uint64 else x.astype(np.int64)).to(device)

    return t(hashes), t(offsets), t(a), t(b)


def device_of(name):
    """Where backend ``name`` runs: Triton on the GPU where there is one (else through its
    interpreter on the CPU), the torch path on the CPU."""
    return "cuda" if name == "triton" and torch.cuda.is_available() else "cpu"


def check(hashes, offsets, a, b, scheme, name):
    """``g.signatures`` under backend ``name`` equals ``k.minhash_signatures``; returns it (on the CPU)."""
    hashes, offsets = np.asarray(hashes, np.uint32), np.asarray(offsets, np.int64)
    expected = k.minhash_signatures(hashes, offsets, a, b, scheme)
    with backend(name):
        got = g.signatures(*as_tensors(hashes, offsets, a, b, device=device_of(name)), scheme).cpu()
    assert got.dtype == torch.int64 and tuple(got.shape) == expected.shape
    if got.numel():
        assert 0 <= int(got.min()) and int(got.max()) <= 0xFFFFFFFF
    np.testing.assert_array_equal(got.numpy().astype(np.uint32), expected)
    return got


def batch(lengths, seed):
    """Random uint32 hashes for documents of ``lengths`` (edge values first) and their offsets."""
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    hashes = np.random.default_rng(seed).integers(0, 1 << 32, offsets[-1], dtype=np.uint64).astype(np.uint32)
    hashes[: len(EDGE_HASHES)] = EDGE_HASHES[: len(hashes)]
    return hashes, offsets


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("num_perm", [1, 7, 128])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_equals_numba_on_config_permutations(scheme, num_perm, name):
    a, b = perms(scheme, num_perm)
    hashes, offsets = batch([0, 5, 1, 0, 0, 70, 33, 0, 2], seed=num_perm)
    sig = check(hashes, offsets, a, b, SCHEMES[scheme], name)
    assert (sig[[0, 3, 4, 7]] == 0xFFFFFFFF).all()  # empty documents


@pytest.mark.parametrize("scheme", SCHEMES)
def test_perms_are_the_config_permutations(scheme):
    cfg = FingerprintConfig(scheme=scheme, num_perm=128, seed=3)
    for mine, theirs in zip(perms(scheme, 128, 3), cfg.permutations):
        np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_single_document_and_single_hash(scheme, name):
    a, b = perms(scheme, 7)
    for h in EDGE_HASHES:
        check([h], [0, 1], a, b, SCHEMES[scheme], name)
    check(EDGE_HASHES, [0, len(EDGE_HASHES)], a, b, SCHEMES[scheme], name)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_no_documents_no_hashes_no_permutations(scheme, name):
    a, b = perms(scheme, 7)
    assert check([], [0], a, b, SCHEMES[scheme], name).shape == (0, 7)
    assert (check([], [0, 0, 0], a, b, SCHEMES[scheme], name) == 0xFFFFFFFF).all()
    assert check([5, 6], [0, 2], a[:0], b[:0], SCHEMES[scheme], name).shape == (1, 0)


@pytest.mark.parametrize("name", BACKENDS)
def test_parameters_where_signedness_matters(name):
    """Extreme ``a``, ``b``: uint32 near 2**32 for affine32; uint64 near 2**61, 2**63 and 2**64
    for legacy (negative as int64 bit patterns), so the product wraps and the sum overflows."""
    hashes, offsets = batch([7, 0, 40], seed=1)
    a32 = np.array([1, 0xFFFFFFFF, 0x80000001, 0, 0xFFFFFFFF], np.uint32)
    b32 = np.array([0xFFFFFFFF, 0xFFFFFFFF, 0, 0x80000000, 0], np.uint32)
    check(hashes, offsets, a32, b32, k.SCHEME_AFFINE32, name)
    p = (1 << 61) - 1
    a64 = np.array([1, p - 1, p, p + 1, 1 << 63, (1 << 64) - 1, (1 << 63) + 12345, 3], np.uint64)
    b64 = np.array([p - 1, p - 1, 0, (1 << 64) - 1, (1 << 63) - 1, 1 << 63, p, (1 << 64) - 2], np.uint64)
    check(hashes, offsets, a64, b64, k.SCHEME_LEGACY, name)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_torch_path_chunks_cross_documents(scheme, monkeypatch):
    """Chunks of a few tokens that split documents give the same signatures as one chunk."""
    monkeypatch.setattr(g, "CHUNK", 3 * 7)  # three tokens per chunk at num_perm 7
    a, b = perms(scheme, 7)
    check(*batch([4, 0, 1, 9, 2, 0, 5], seed=2), a, b, SCHEMES[scheme], "torch")


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 50), min_size=1, max_size=8),
    num_perm=st.integers(1, 140),
    seed=st.integers(0, 2**32 - 1),
    scheme=st.sampled_from(sorted(SCHEMES)),
    name=st.sampled_from(BACKENDS),
)
def test_random_batches(lengths, num_perm, seed, scheme, name):
    a, b = perms(scheme, num_perm, seed)
    check(*batch(lengths, seed), a, b, SCHEMES[scheme], name)


TEXTS = [
    "The quick brown fox jumps over the lazy dog, again and again and again.",
    "",
    "one",
    "Ünïcödé ΣΟΦΙΑ ﬁne — café, naïve; 가 e\u0301 and 123 + $5 emoji 🙂 words here",
    "the quick brown fox jumps over the lazy dog again",
    "!!! ... ---",
]


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_end_to_end_texts(scheme, name):
    """``FingerprintConfig.signatures`` equals the kernel fed the reference shingle hashes."""
    cfg = FingerprintConfig(scheme=scheme, num_perm=64, ngram=3)
    per_doc = [[xxhash.xxh32_intdigest(s) for s in cfg.shingles(t)] for t in TEXTS]
    offsets = np.zeros(len(TEXTS) + 1, np.int64)
    np.cumsum([len(h) for h in per_doc], out=offsets[1:])
    hashes = np.array([h for doc in per_doc for h in doc], np.uint32)
    a, b = cfg.permutations
    with backend(name):
        got = g.signatures(*as_tensors(hashes, offsets, a, b, device=device_of(name)), SCHEMES[scheme]).cpu()
    np.testing.assert_array_equal(got.numpy().astype(np.uint32), cfg.signatures(TEXTS))


def _good():
    a, b = perms("affine32", 4)
    return [*as_tensors(np.array([1, 2, 3], np.uint32), [0, 1, 3], a, b), k.SCHEME_AFFINE32]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x: x.__setitem__(0, x[0].to(torch.int32)), "hashes has dtype torch.int32"),
        (lambda x: x.__setitem__(0, x[0].reshape(1, 3)), r"hashes has shape \(1, 3\)"),
        (lambda x: x.__setitem__(0, [1, 2, 3]), "hashes is a list"),
        (lambda x: x.__setitem__(0, torch.tensor([1, 2, 1 << 32])), r"hashes holds values from 1 to 4294967296"),
        (lambda x: x.__setitem__(0, torch.tensor([-1, 2, 3])), "hashes holds values from -1"),
        (lambda x: x.__setitem__(1, torch.tensor([1, 1, 3])), "offsets run from 1 to 3"),
        (lambda x: x.__setitem__(1, torch.tensor([0, 1, 2])), r"len\(hashes\) = 3"),
        (lambda x: x.__setitem__(1, torch.tensor([0, 2, 1, 3])), "offsets decrease at document 1: 2 then 1"),
        (lambda x: x.__setitem__(1, torch.zeros(0, dtype=torch.int64)), "offsets is empty"),
        (lambda x: x.__setitem__(1, torch.tensor([0, 9, 1, 9, 3])[::2]), "offsets of shape .* not contiguous"),
        (lambda x: x.__setitem__(2, x[2][:3]), "a has 3 permutations, b 4"),
        (lambda x: x.__setitem__(3, torch.tensor([0, 1, 2, 1 << 40])), "b holds values from 0 to 1099511627776"),
        (lambda x: x.__setitem__(4, 2), "scheme must be 0 .* or 1 .*, got 2"),
        (lambda x: x.__setitem__(2, x[2].to("meta")), "a is on meta, hashes on cpu"),
    ],
)
def test_bad_input(change, message):
    args = _good()
    change(args)
    with pytest.raises(InvalidParameterError, match=message):
        g.signatures(*args)


def test_legacy_takes_any_64_bit_pattern():
    args = _good()
    args[2], args[3], args[4] = torch.tensor([-1, -(1 << 63), 5, 0]), torch.tensor([-7, 0, 0, -1]), k.SCHEME_LEGACY
    assert g.signatures(*args).shape == (2, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
class TestCuda:
    """At a realistic size on the GPU: 10,000 documents of up to 2,000 shingles, 128 permutations."""

    @pytest.mark.parametrize("scheme", SCHEMES)
    def test_realistic_batch(self, scheme):
        rng = np.random.default_rng(7)
        lengths = rng.integers(0, 2000, 10_000)
        lengths[::97] = 0
        hashes, offsets = batch(lengths, seed=7)
        a, b = perms(scheme, 128)
        expected = k.minhash_signatures(hashes, offsets, a, b, SCHEMES[scheme])
        args = as_tensors(hashes, offsets, a, b, device="cuda")
        for name in ("auto", "torch"):
            with backend(name):
                got = g.signatures(*args, SCHEMES[scheme])
            np.testing.assert_array_equal(got.cpu().numpy().astype(np.uint32), expected)


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
@pytest.mark.parametrize("device", DEVICES)
def test_fingerprint_batch_on_a_device_gpu_path_equals_the_fused_cpu_pass(scheme, device):
    """``fingerprint_batch(device=...)``: normalise and shingle on the CPU, MinHash on the device
    (the Triton kernel on CUDA), band keys on the CPU; every output equals the fused CPU pass."""
    from provenance.synthetic import generate_corpus

    texts = [d["text"] for d in generate_corpus(200, mean_words=60, dup_fraction=0.2, mutation=0.05, seed=5).docs]
    texts += ["", "   ", "one", "two words", "Ünïcödé ﬁ ligature STRASSE Straße", "é" * 300]
    cfg = FingerprintConfig(scheme=scheme, num_perm=128)
    fused, split = cfg.fingerprint_batch(texts), cfg.fingerprint_batch(texts, device=device)
    for field in ("exact_hash", "token_count", "signatures", "band_keys"):
        np.testing.assert_array_equal(getattr(split, field), getattr(fused, field), err_msg=field)
    assert split.signatures.dtype == np.uint32 and split.signatures.shape == (len(texts), 128)
