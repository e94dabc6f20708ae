"""Secret randomness for DP-SGD: Poisson sampling and Gaussian noise no config seed determines.

Why: DP-SGD's guarantee holds only if whoever sees the released model cannot reproduce the
noise. A noise generator seeded from ``cfg.seed`` (a public number, and in federated mode one
the *server* chooses) lets anyone regenerate every draw and subtract it; the reported epsilon
is then void. So every secret here comes from the OS CSPRNG (``secrets``) when a trainer is
built, and its state lives only in that trainer's private checkpoint (rank file) or a
federated site's private state — never in configs, logs, file names or messages.

Two modes (``dp.secure_mode``):

* default: the noise is drawn by a ``torch.Generator`` on the training device, seeded with 63
  bits from the OS CSPRNG; its state is checkpointed. Poisson masks come from a CPU
  generator seeded per (epoch, step) from a 256-bit OS key. Fast; the generators themselves
  are torch's PRNGs (Mersenne Twister / Philox), not cryptographic ones.
* ``secure_mode: true``: what Opacus' ``secure_mode`` promises, without the archived
  ``torchcsprng``: every Poisson mask and every noise value is derived from SHAKE-256 (an
  extendable-output hash, a CSPRNG when keyed with a secret) keyed by the 256-bit OS key,
  and the noise is the sum of 4 Gaussians halved (Opacus' defence against floating-point
  attacks on Gaussian samplers). Slower: 32 bytes of SHAKE output per parameter per step.

Both modes are stateless per step given the key (noise: key + draw counter), so an
interrupted run resumed from a checkpoint continues bit for bit.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from typing import Any

import numpy as np
import torch
from torch import Tensor

KEY_BYTES = 32
_TWO_PI = 2.0 * math.pi


def os_key() -> bytes:
    """256 bits from the OS CSPRNG."""
    return secrets.token_bytes(KEY_BYTES)


def os_seed() -> int:
    """A 63-bit torch seed from the OS CSPRNG."""
    return secrets.randbits(63)


def _xof(key: bytes, context: tuple[Any, ...], nbytes: int) -> bytes:
    # The key has a fixed length, so key || repr(context) is an unambiguous input encoding.
    return hashlib.shake_256(key + repr(context).encode("utf-8")).digest(nbytes)


def keyed_seed(key: bytes, *context: Any) -> int:
    """A 63-bit seed that only the key holder can compute for ``context``."""
    return int.from_bytes(_xof(key, context, 8), "little") & ((1 << 63) - 1)


def keyed_uniform(key: bytes, *context: Any, n: int) -> Tensor:
    """``n`` float64 uniforms in the open interval (0, 1) from the keyed SHAKE-256 stream."""
    words = np.frombuffer(_xof(key, context, 8 * n), dtype="<u8")
    # 53 random bits + 1/2: never 0 (log-safe for Box-Muller) and never 1
    return torch.from_numpy(((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53)


def keyed_normal(key: bytes, *context: Any, n: int) -> Tensor:
    """``n`` float64 standard normals (Box-Muller on keyed uniforms)."""
    pairs = (n + 1) // 2
    u = keyed_uniform(key, *context, n=2 * pairs)
    radius = torch.sqrt(-2.0 * torch.log(u[:pairs]))
    angle = _TWO_PI * u[pairs:]
    return torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])[:n]


class DPRandomness:
    """The trainer's private DP-SGD randomness: a key and a noise generator, both from the OS.

    ``state_dict`` holds secrets: store it only where the model owner's checkpoints go.
    """

    def __init__(self, device: torch.device | str = "cpu", *, secure: bool = False) -> None:
        self.secure = bool(secure)
        self.key = os_key()
        self.noise_generator = torch.Generator(device=device)
        self.noise_generator.manual_seed(os_seed())
        #: noise draws so far (secure mode): makes every step's noise a fresh part of the stream
        self.noise_draws = 0

    def poisson_mask(self, epoch: int, step: int, num_samples: int, sample_rate: float) -> Tensor:
        """Which samples step ``step`` of ``epoch`` includes, each independently with ``sample_rate``."""
        if self.secure:
            u = keyed_uniform(self.key, "poisson", epoch, step, n=num_samples)
        else:
            g = torch.Generator()
            g.manual_seed(keyed_seed(self.key, "poisson", epoch, step))
            u = torch.rand(num_samples, generator=g, dtype=torch.float64)
        return u < sample_rate

    def secure_noise(self, reference: Tensor, std: float, index: int) -> Tensor:
        """N(0, std^2) noise shaped like ``reference`` for parameter ``index`` of the current draw.

        The sum of 4 independent N(0, std^2) draws divided by 2 (Opacus' floating-point
        mitigation, arXiv:2107.10138 section 5.1), computed in float64 and rounded once.
        """
        n = reference.numel()
        z = keyed_normal(self.key, "noise", self.noise_draws, index, n=4 * n).view(4, n).sum(0) / 2.0
        return (z * std).to(device=reference.device, dtype=reference.dtype).view_as(reference)

    def state_dict(self) -> dict[str, Any]:
        return {"key": torch.frombuffer(bytearray(self.key), dtype=torch.uint8).clone(),
                "noise_generator": self.noise_generator.get_state(), "noise_draws": self.noise_draws,
                "secure": self.secure}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        key = bytes(state["key"].to(torch.uint8).tolist())
        if len(key) != KEY_BYTES:
            raise ValueError(f"DP randomness state: key must be {KEY_BYTES} bytes, got {len(key)}")
        if bool(state.get("secure", False)) != self.secure:
            raise ValueError("DP randomness state was written with a different dp.secure_mode")
        self.key = key
        self.noise_generator.set_state(state["noise_generator"])
        self.noise_draws = int(state["noise_draws"])
