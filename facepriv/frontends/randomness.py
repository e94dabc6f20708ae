"""Where frontend randomness comes from.

Training needs reproducible randomness (a seeded ``torch.Generator`` whose state goes into
checkpoints so a resumed run draws the same subsets and noise). Deployed inference needs
randomness an attacker cannot predict or replay: subset choices come from the operating
system's CSPRNG (``secrets``); DCTDP's noise bits, on CPU, are an AES-256-CTR keystream
(:class:`KeystreamWords`) keyed with 256 fresh bits from ``os.urandom`` for every call: a
cryptographically secure generator, and faster than torch's own (0.5 vs 7-15 ns per 32-bit
word here). Training and seeded evaluation key the same keystream from their
``torch.Generator`` instead, so they stay reproducible and resumable.
"""

from __future__ import annotations

import os
import secrets

import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from torch import Tensor


def secure_randbelow(n: int, size: int) -> list[int]:
    """``size`` independent uniform integers in [0, n) from the OS CSPRNG."""
    return [secrets.randbelow(n) for _ in range(size)]


def generator_on(generator: torch.Generator | None, device: torch.device | str) -> torch.Generator:
    """A generator that draws directly on ``device``.

    Why: DCTDP draws millions of noise values per image; drawing them with a CPU generator
    and copying to the GPU would make the CPU the bottleneck of GPU training. The frontends
    keep their checkpointed generators on the CPU (so resume and CPU results are unchanged);
    for another device type, one 62-bit seed is drawn from that CPU generator and seeds a
    fresh device generator — deterministic given the checkpointed CPU state, nothing extra to
    save. ``None`` (deployment): a device generator seeded with 64 bits of OS entropy.
    """
    device = torch.device(device)
    if generator is None:
        return make_generator(int.from_bytes(os.urandom(8), "little") >> 1, device)
    if generator.device.type == device.type:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return make_generator(seed, device)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


class KeystreamWords:
    """Uniform 32-bit words from an AES-256-CTR keystream (a CSPRNG given a secret random key).

    ``key=None`` takes 32 bytes from ``os.urandom``. One object per call site and call: the
    counter continues across :meth:`__call__` / :meth:`bytes`, so no word is ever reused.
    """

    def __init__(self, key: bytes | None = None) -> None:
        key = os.urandom(32) if key is None else bytes(key)
        if len(key) != 32:
            raise ValueError(f"KeystreamWords: key must be 32 bytes, got {len(key)}")
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        self._zeros = b""

    def bytes(self, n: int) -> memoryview:
        """The next ``n`` keystream bytes (encrypting zeros in CTR mode yields the keystream).

        A view of the first ``n`` bytes of a fresh buffer: trimming the buffer instead would copy
        it (megabytes per DCTDP face)."""
        if len(self._zeros) < n:
            self._zeros = bytes(max(n, 2 * len(self._zeros)))
        out = bytearray(n + 15)  # update_into wants room for one block more
        self._encryptor.update_into(memoryview(self._zeros)[:n], out)
        return memoryview(out)[:n]

    def __call__(self, n: int) -> Tensor:
        """``n`` uniform int32 words (any sign)."""
        if n <= 0:
            return torch.empty(0, dtype=torch.int32)
        return torch.frombuffer(self.bytes(4 * n), dtype=torch.int32)

    def cells(self, n: int) -> Tensor:
        """``n`` uniform 16-bit values as int32 in [0, 65536): half the keystream of :meth:`__call__`."""
        if n <= 0:
            return torch.empty(0, dtype=torch.int32)
        return torch.frombuffer(self.bytes(2 * n), dtype=torch.uint16).int()


class DeviceWords:
    """Uniform words drawn on a non-CPU device from a torch generator (see :func:`word_source`)."""

    def __init__(self, generator: torch.Generator, device: torch.device) -> None:
        self.generator, self.device = generator, device

    def __call__(self, n: int) -> Tensor:
        return torch.randint(-(2**31), 2**31, (max(n, 0),), generator=self.generator, dtype=torch.int32, device=self.device)

    def cells(self, n: int) -> Tensor:
        return torch.randint(0, 2**16, (max(n, 0),), generator=self.generator, dtype=torch.int32, device=self.device)


def key_from_generator(generator: torch.Generator) -> bytes:
    """256 key bits drawn from a (checkpointed) CPU generator: deterministic given its state."""
    draws = torch.randint(0, 2**32, (8,), generator=generator, dtype=torch.int64)
    return b"".join(int(v).to_bytes(4, "little") for v in draws.tolist())


def word_source(generator: torch.Generator | None, device: torch.device | str) -> KeystreamWords | DeviceWords:
    """Uniform random words on ``device`` for noise that protects a release (``words(n)``, ``words.cells(n)``).

    CPU: :class:`KeystreamWords`, keyed from ``os.urandom`` (``generator=None``: deployment) or
    from ``generator`` (training / seeded evaluation: reproducible and resumable from the
    generator's checkpointed state). Other devices draw on the device from :func:`generator_on`
    (seeded from ``generator`` or 64 OS-entropy bits): fast and reproducible, but not a CSPRNG;
    deploy DCTDP on CPU or through the device export, whose randomness is an input from the
    platform CSPRNG.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return KeystreamWords(None if generator is None else key_from_generator(generator))
    return DeviceWords(generator_on(generator, device), device)
