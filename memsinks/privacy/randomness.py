"""Where DP-SGD's two random draws come from: which units a step samples, and the Gaussian noise.

The guarantee assumes the adversary cannot predict either draw. Opacus's ``secure_mode``
draws both from a cryptographically secure generator (torchcsprng, no longer maintained)
and hardens the noise against floating-point attacks; without it, Opacus seeds torch's
generators like any training run, so a published seed (``TrainingArguments.seed`` is 42 by
default and saved in ``training_args.bin``) or a checkpoint's ``rng_state.pth`` determines
every later draw. Here, by default:

- a 256-bit secret key is taken from the operating system's entropy (``os.urandom``) when
  ``train()`` starts; it is never written anywhere (a resumed run takes a fresh one: the
  ledger is what continues, not the randomness);
- every draw gets its own generator, seeded with 64 bits derived from the key, the purpose
  and the step (keyed BLAKE2b), so one step's draws say nothing about another's even though
  the generators themselves (numpy's PCG64, torch's Mersenne twister / Philox) are not
  cryptographic;
- the noise is the sum of four Gaussian draws divided by two (the fix of Holohan & Braghin 2021,
  "Secure random sampling in differential privacy", used by Opacus's ``secure_mode``),
  which closes the floating-point attack on naive Gaussian sampling (Jin et al. 2022,
  "Are we there yet? Timing and floating-point attacks on differential privacy systems").

``PrivacyConfig(reproducible=True)`` derives the key from ``TrainingArguments.seed`` instead
and draws plain Gaussians: two runs, or a run and its resumption, draw the same batches and
noise. That is for debugging and tests; it is not private against anyone who knows the seed.
Under several processes the sampling key is rank 0's, sent to the others once per
``train()``; only rank 0 draws noise.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch


class PrivacyRandomness:
    """Seeds for the draws of one run, derived from a key that never leaves the process group.

    Use ``PrivacyRandomness.secure()`` or ``PrivacyRandomness.from_seed(seed)``.
    """

    def __init__(self, key: bytes, reproducible: bool):
        if len(key) != 32:
            raise ValueError(f"A randomness key has 32 bytes; got {len(key)}.")
        self._key = key
        self.reproducible = reproducible

    @classmethod
    def secure(cls) -> "PrivacyRandomness":
        """A fresh key from the operating system's entropy (the default)."""
        return cls(os.urandom(32), reproducible=False)

    @classmethod
    def from_seed(cls, seed: int) -> "PrivacyRandomness":
        """A key derived from ``seed``: the same draws every time (insecure: the seed is not secret)."""
        return cls(hashlib.blake2b(f"memsinks-reproducible:{int(seed)}".encode(), digest_size=32).digest(),
                   reproducible=True)

    def seed(self, purpose: str, *counters: int) -> int:
        """A 64-bit seed for one draw: keyed BLAKE2b of ``purpose`` and ``counters`` (epoch, step...)."""
        message = ":".join([purpose, *(str(int(c)) for c in counters)]).encode()
        digest = hashlib.blake2b(message, key=self._key, digest_size=8).digest()
        return int.from_bytes(digest, "little") & ((1 << 63) - 1)

    def numpy_generator(self, purpose: str, *counters: int) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(self.seed(purpose, *counters)))

    def torch_generator(self, device: torch.device, purpose: str, *counters: int) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed(purpose, *counters))

    def shared(self) -> "PrivacyRandomness":
        """Under several processes: rank 0's key on every rank (a collective; every rank must call it)."""
        import torch.distributed as dist

        if self.reproducible or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self  # a seed's key is the same on every rank already
        box = [self._key]
        dist.broadcast_object_list(box, src=0)
        return PrivacyRandomness(box[0], self.reproducible)

    def __repr__(self) -> str:
        return f"PrivacyRandomness(reproducible={self.reproducible})"

    def __reduce__(self):
        raise TypeError("PrivacyRandomness holds the run's secret key and is never saved or pickled.")
