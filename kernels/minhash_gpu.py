"""MinHash signatures on torch tensors: a Triton kernel for CUDA and a plain-torch path beside it.

Same results, bit for bit, as :func:`provenance.kernels.minhash.minhash_signatures` (the numba CPU
path): ``affine32`` is ``min over tokens of (a * fmix32(h) + b) mod 2**32``; ``legacy`` is
``min of ((h * a + b) mod 2**64) mod (2**61 - 1) & 0xFFFFFFFF``. A document without hashes gets
``0xFFFFFFFF`` in every position, like an empty ``datasketch.MinHash``.

Integer representation: every tensor is ``torch.int64``. ``hashes`` and the output hold uint32
values (0 to 2**32 - 1); ``a`` and ``b`` hold the bit patterns of the CPU path's uint32
(affine32) or uint64 (legacy) parameters, so a legacy value of 2**63 or more is negative here.
Both paths rely on two's-complement wraparound of int64 multiplication (as torch and Triton do on
CPU and CUDA); the unsigned reduction mod 2**61 - 1 uses ``2**61 ≡ 1``: with ``x = hi * 2**61 +
lo``, ``x mod p = hi + lo`` less ``p`` once if needed, so no signed division ever runs.

Anatomy (STYLE.md, "Kernels"): :func:`signatures` checks its inputs, then
:func:`provenance.kernels.dispatch.pick` chooses :func:`_minhash_kernel` (Triton) or
:func:`_signatures_torch`, the reference that is also the CPU path.
"""

from __future__ import annotations

import torch

from provenance.errors import InvalidParameterError
from provenance.kernels.dispatch import pick
from provenance.kernels.minhash import SCHEME_AFFINE32, SCHEME_LEGACY

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch path still works; Triton is the gpu extra: pip install 'provenance[gpu]'
    triton = None

EMPTY = 0xFFFFFFFF  # every position of a document without hashes
MASK32 = 0xFFFFFFFF
MERSENNE61 = (1 << 61) - 1
BLOCK_T = 32  # tokens per step of a Triton program
BLOCK_P = 128  # permutations per Triton program (at most)
CHUNK = 1 << 20  # token x permutation values per step of the torch path, so memory stays bounded


def signatures(hashes: torch.Tensor, offsets: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scheme: int) -> torch.Tensor:
    """MinHash signatures ``int64[n_docs, num_perm]`` (uint32 values) of a batch of documents.

    ``hashes``: int64 token hashes in ``[0, 2**32)``, the documents one after another; document
    ``i`` is ``hashes[offsets[i]:offsets[i + 1]]``. ``offsets``: int64, ``n_docs + 1``
    non-decreasing values from 0 to ``len(hashes)``. ``a``, ``b``: int64 ``(num_perm,)`` as
    :attr:`provenance.FingerprintConfig.permutations` gives them, as int64 bit patterns
    (``torch.from_numpy(a.astype(np.int64))`` for uint32, ``a.view(np.int64)`` for uint64; in
    ``[0, 2**32)`` for affine32, any 64-bit pattern for legacy). ``scheme``: ``SCHEME_AFFINE32``
    (0) or ``SCHEME_LEGACY`` (1). All on one device, contiguous. The checks read a few values
    back to the host (offsets' ends, value ranges): a few synchronisations per call on CUDA.
    """
    _check(hashes, offsets, a, b, scheme)
    n_docs, num_perm = offsets.numel() - 1, a.numel()
    out = torch.full((n_docs, num_perm), EMPTY, dtype=torch.int64, device=hashes.device)
    if out.numel() == 0 or hashes.numel() == 0:
        return out
    if pick(hashes, offsets, a, b) == "triton":
        _signatures_triton(hashes, offsets, a, b, scheme, out)
    else:
        _signatures_torch(hashes, offsets, a, b, scheme, out)
    return out


# ---- validation ----------------------------------------------------------------------------------


def _check(hashes, offsets, a, b, scheme) -> None:
    """Raise :class:`InvalidParameterError` naming the first bad input and its values."""
    if scheme not in (SCHEME_AFFINE32, SCHEME_LEGACY):
        raise InvalidParameterError(f"scheme must be {SCHEME_AFFINE32} (affine32) or {SCHEME_LEGACY} (legacy), got {scheme!r}")
    named = {"hashes": hashes, "offsets": offsets, "a": a, "b": b}
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise InvalidParameterError(f"{name} is a {type(t).__name__}, not a tensor")
        if t.dtype != torch.int64:
            raise InvalidParameterError(f"{name} has dtype {t.dtype}; minhash takes int64 tensors (uint32 values in int64)")
        if t.dim() != 1:
            raise InvalidParameterError(f"{name} has shape {tuple(t.shape)}; it must be one-dimensional")
        if t.device != hashes.device:
            raise InvalidParameterError(f"{name} is on {t.device}, hashes on {hashes.device}")
        if not t.is_contiguous():
            raise InvalidParameterError(f"{name} of shape {tuple(t.shape)} has strides {t.stride()}: not contiguous")
    if a.numel() != b.numel():
        raise InvalidParameterError(f"a has {a.numel()} permutations, b {b.numel()}")
    if offsets.numel() == 0:
        raise InvalidParameterError("offsets is empty; it needs n_docs + 1 values, starting with 0")
    first, last = int(offsets[0]), int(offsets[-1])
    if first != 0 or last != hashes.numel():
        raise InvalidParameterError(f"offsets run from {first} to {last}; they must run from 0 to len(hashes) = {hashes.numel()}")
    if offsets.numel() > 1 and bool((offsets[1:] < offsets[:-1]).any()):
        i = int((offsets[1:] < offsets[:-1]).nonzero()[0])
        raise InvalidParameterError(f"offsets decrease at document {i}: {int(offsets[i])} then {int(offsets[i + 1])}")
    ranged = [("hashes", hashes)] + ([("a", a), ("b", b)] if scheme == SCHEME_AFFINE32 else [])
    for name, t in ranged:
        if t.numel() and (int(t.min()) < 0 or int(t.max()) > MASK32):
            raise InvalidParameterError(f"{name} holds values from {int(t.min())} to {int(t.max())}; uint32 values lie in [0, 2**32)")


# ---- torch path (the reference, and the CPU path) ------------------------------------------------


def _fmix32_torch(h: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser of int64 ``h`` holding uint32 values."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & MASK32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & MASK32
    return h ^ (h >> 16)


def _permute_torch(h: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scheme: int) -> torch.Tensor:
    """The permuted values ``int64[len(h), num_perm]`` (uint32 values) of token hashes ``h``."""
    if scheme == SCHEME_AFFINE32:
        return (_fmix32_torch(h)[:, None] * a + b).bitwise_and_(MASK32)
    x = h[:, None] * a + b  # wraps mod 2**64 like numpy's uint64
    r = (x >> 61).bitwise_and_(7).add_(x.bitwise_and_(MERSENNE61))  # ≡ x mod p, at most p + 7
    return r.sub_(MERSENNE61 * (r >= MERSENNE61)).bitwise_and_(MASK32)


@torch.no_grad()
def _signatures_torch(hashes, offsets, a, b, scheme, out) -> None:
    """Into ``out``: the minimum over each document's permuted hashes, ``CHUNK`` values at a time
    (chunks of tokens that may cross documents; each token's row of values goes to its document)."""
    step = max(1, CHUNK // a.numel())
    for start in range(0, hashes.numel(), step):
        stop = min(start + step, hashes.numel())
        tokens = torch.arange(start, stop, device=hashes.device)
        doc = torch.searchsorted(offsets, tokens, right=True) - 1  # the document of each token
        values = _permute_torch(hashes[start:stop], a, b, scheme)
        out.scatter_reduce_(0, doc[:, None].expand_as(values), values, reduce="amin")


# ---- Triton path ---------------------------------------------------------------------------------


def _signatures_triton(hashes, offsets, a, b, scheme, out) -> None:
    """Launch :func:`_minhash_kernel`: one program per (document, block of permutations)."""
    n_docs, num_perm = out.shape
    block_p = min(BLOCK_P, triton.next_power_of_2(num_perm))
    grid = (n_docs, triton.cdiv(num_perm, block_p))
    _minhash_kernel[grid](hashes, offsets, a, b, out, num_perm, SCHEME=scheme, BLOCK_T=BLOCK_T, BLOCK_P=block_p)


if triton is not None:

    @triton.jit
    def _fmix32(h):
        """murmur3's 32-bit finaliser on uint32 ``h`` (logical shifts, wrapping multiplies)."""
        h ^= h >> 16
        h *= 0x85EBCA6B
        h ^= h >> 13
        h *= 0xC2B2AE35
        h ^= h >> 16
        return h

    @triton.jit
    def _minhash_kernel(h_ptr, off_ptr, a_ptr, b_ptr, out_ptr, num_perm,
                        SCHEME: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr):
        """Signature of document ``program_id(0)`` at permutations ``program_id(1) * BLOCK_P + ...``:
        its hashes are read ``BLOCK_T`` at a time into a ``[BLOCK_T, BLOCK_P]`` running minimum
        held in registers and reduced over tokens once, at the end. affine32 runs in uint32
        (wrapping); legacy in int64 with the mod-(2**61 - 1) fold."""
        doc = tl.program_id(0).to(tl.int64)
        perms = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = perms < num_perm
        lo = tl.load(off_ptr + doc)
        hi = tl.load(off_ptr + doc + 1)
        a = tl.load(a_ptr + perms, mask=pmask, other=0)
        b = tl.load(b_ptr + perms, mask=pmask, other=0)
        if SCHEME == 0:
            a = a.to(tl.uint32)
            b = b.to(tl.uint32)
            acc = tl.full([BLOCK_T, BLOCK_P], 0xFFFFFFFF, tl.uint32)
        else:
            acc = tl.full([BLOCK_T, BLOCK_P], 0xFFFFFFFF, tl.int64)
        for start in range(lo, hi, BLOCK_T):
            toks = start + tl.arange(0, BLOCK_T)
            tmask = toks < hi
            h = tl.load(h_ptr + toks, mask=tmask, other=0)
            if SCHEME == 0:
                v = _fmix32(h.to(tl.uint32))[:, None] * a[None, :] + b[None, :]
                v = tl.where(tmask[:, None], v, acc)
            else:
                x = h[:, None] * a[None, :] + b[None, :]  # int64, wraps mod 2**64
                r = ((x >> 61) & 7) + (x & 0x1FFFFFFFFFFFFFFF)
                r = tl.where(r >= 0x1FFFFFFFFFFFFFFF, r - 0x1FFFFFFFFFFFFFFF, r)
                v = tl.where(tmask[:, None], r & 0xFFFFFFFF, acc)
            acc = tl.minimum(acc, v)
        tl.store(out_ptr + doc * num_perm + perms, tl.min(acc, axis=0).to(tl.int64), mask=pmask)
