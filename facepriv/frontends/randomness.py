"""Where frontend randomness comes from.

Training needs reproducible randomness (a seeded ``torch.Generator`` whose state goes into
checkpoints so a resumed run draws the same subsets and noise). Deployed inference needs
randomness an attacker cannot predict or replay: subset choices and noise come from the
operating system's CSPRNG (``os.urandom`` / ``secrets``) unless the caller passes a seed,
e.g. for a reproducible evaluation.
"""

from __future__ import annotations

import os
import secrets

import torch
from torch import Tensor

#: Smallest uniform value we emit: keeps log(u) finite when turning uniforms into Laplace noise.
_TINY = 2.0**-25


def secure_randbelow(n: int, size: int) -> list[int]:
    """``size`` independent uniform integers in [0, n) from the OS CSPRNG."""
    return [secrets.randbelow(n) for _ in range(size)]


def secure_uniform(shape: tuple[int, ...], *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """Uniform (0, 1) samples built from ``os.urandom`` bytes (24 random bits each)."""
    n = 1
    for d in shape:
        n *= int(d)
    raw = torch.frombuffer(bytearray(os.urandom(4 * n)), dtype=torch.int32) if n else torch.empty(0, dtype=torch.int32)
    bits = (raw.to(torch.int64) & 0xFFFFFF).to(torch.float64)
    u = ((bits + 0.5) / float(1 << 24)).to(dtype).view(*shape)
    return u.to(device)


def uniform(shape: tuple[int, ...], generator: torch.Generator | None, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Uniform (0, 1): from ``generator`` when given (reproducible), else from the OS CSPRNG."""
    if generator is None:
        return secure_uniform(shape, dtype=dtype, device=device)
    gen_device = generator.device
    u = torch.rand(shape, generator=generator, dtype=dtype, device=gen_device)
    return u.clamp_(min=_TINY).to(device)


def laplace(shape: tuple[int, ...], generator: torch.Generator | None, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Standard Laplace(0, 1) samples by inverse CDF: ``-sign(w) * log(1 - 2|w|)``, w = u - 1/2."""
    w = uniform(shape, generator, dtype=dtype, device=device) - 0.5
    return -torch.sign(w) * torch.log1p(-2.0 * w.abs()).clamp_(min=torch.finfo(dtype).min)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g
