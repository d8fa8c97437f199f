"""Importance-weighted estimates of log p(x) in fixed memory, shared by every model family.

log p(x) ~ log (1/K) sum_i w_i with w_i = p(x, z_i) / q(z_i | x) (Burda et al. 2016): the
samples are taken a chunk at a time and folded into a running log-sum-exp, so memory
depends on the chunk, never on K.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

#: values in flight per chunk: about 2**22 decoder outputs (times the parameter maps)
VALUES_IN_FLIGHT = 1 << 22


def chunk_size(k: int, values_per_sample: int) -> int:
    """Samples per chunk for ``values_per_sample`` values (over the whole batch) per sample."""
    return max(1, min(k, VALUES_IN_FLIGHT // max(values_per_sample, 1)))


def log_mean_exp_streamed(log_weights: Callable[[int], torch.Tensor], k: int, chunk: int,
                          rows: int, like: torch.Tensor) -> torch.Tensor:
    """log (1/k) sum_i exp(l_i) per row, where ``log_weights(n)`` draws n samples' log
    weights, (n, rows); ``like`` gives the device and dtype."""
    running = torch.full((rows,), -math.inf, device=like.device, dtype=like.dtype)
    done = 0
    while done < k:
        n = min(chunk, k - done)
        running = torch.logaddexp(running, torch.logsumexp(log_weights(n), 0))
        done += n
    return running - math.log(k)
