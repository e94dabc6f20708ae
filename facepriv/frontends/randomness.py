"""Where frontend randomness comes from.

Training needs reproducible randomness (a seeded ``torch.Generator`` whose state goes into
checkpoints so a resumed run draws the same subsets and noise). Deployed inference needs
randomness an attacker cannot predict or replay: subset choices come from the operating
system's CSPRNG (``secrets``), and noise from a generator freshly seeded from ``os.urandom``
for every call, unless the caller passes a seed (e.g. for a reproducible evaluation).
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


def laplace(shape: tuple[int, ...], generator: torch.Generator | None, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Standard Laplace(0, 1) samples by inverse CDF: ``-sign(w) * log(1 - 2|w|)``, w = u - 1/2.

    With ``generator=None`` the generator is freshly seeded with 64 bits from the OS CSPRNG
    for this call (fresh, unpredictable noise per call). Pure ``os.urandom`` uniforms are
    available through :func:`secure_uniform` but cost ~40 MB of kernel randomness per DCTDP
    image, too slow to be the default. In-place ops: this runs on millions of elements per image.
    """
    generator = generator_on(generator, device)
    w = torch.rand(shape, generator=generator, dtype=dtype, device=generator.device).clamp_(min=_TINY).sub_(0.5)
    sign = torch.sign(w)
    return w.abs_().mul_(-2.0).log1p_().mul_(sign).neg_().to(device)


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
