"""The float64 CPU reference of the mLSTM (tfla's ground truth, the Rust ``tfla::reference``).

Arrays are anything ``numpy.asarray`` takes (numpy arrays, CPU torch tensors, lists); shapes
as in ``tfla.torch``: q, k (B, NH, S, DQK), v (B, NH, S, DHV), i, f (B, NH, S), states
c (B, NH, DQK, DHV), n (B, NH, DQK), m (B, NH). Results are float64 numpy arrays.

``forward`` runs the recurrence step by step; ``backward`` its hand-written reverse, exact or
with the normalizer detached (``grad_mode``).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np

from . import _tfla


class Outputs(NamedTuple):
    h: np.ndarray
    c: np.ndarray
    n: np.ndarray
    m: np.ndarray


class Grads(NamedTuple):
    dq: np.ndarray
    dk: np.ndarray
    dv: np.ndarray
    di: np.ndarray
    df: np.ndarray
    dc0: np.ndarray
    dn0: np.ndarray
    dm0: np.ndarray


def _f64(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().to("cpu").double().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float64))


def _bytes(x: Any) -> Optional[bytes]:
    return None if x is None else _f64(x).tobytes()


def _shape(q: np.ndarray, v: np.ndarray) -> tuple[int, int, int, int, int]:
    if q.ndim != 4 or v.ndim != 4:
        raise ValueError(f"`q` and `v` must be (B, NH, S, D), got {q.shape} and {v.shape}")
    b, nh, s, dqk = q.shape
    if v.shape[:3] != (b, nh, s):
        raise ValueError(f"`v` has shape {v.shape}, expected ({b}, {nh}, {s}, DHV)")
    return b, nh, s, dqk, v.shape[3]


def _arrays(raw: list, shapes: list) -> list:
    return [np.frombuffer(r, dtype=np.float64).reshape(s) for r, s in zip(raw, shapes)]


def forward(
    q, k, v, i, f, c0=None, n0=None, m0=None, *,
    variant: str = "exp", normalize: bool = True, eps: float = 1e-6,
    scale: Optional[float] = None,
) -> Outputs:  # fmt: skip
    """h and the final states c, n, m (m is zero for "sig"). ``scale`` defaults to 1/√DQK."""
    q, v = _f64(q), _f64(v)
    shape = _shape(q, v)
    b, nh, s, dqk, dhv = shape
    raw = _tfla.reference_forward(
        shape, q.tobytes(), _bytes(k), v.tobytes(), _bytes(i), _bytes(f),
        _bytes(c0), _bytes(n0), _bytes(m0), variant, normalize, eps, scale,
    )  # fmt: skip
    return Outputs(*_arrays(raw, [(b, nh, s, dhv), (b, nh, dqk, dhv), (b, nh, dqk), (b, nh)]))


def backward(
    q, k, v, i, f, dh, c0=None, n0=None, m0=None, dc=None, dn=None, dm=None, *,
    variant: str = "exp", normalize: bool = True, eps: float = 1e-6,
    scale: Optional[float] = None, grad_mode: str = "exact",
) -> Grads:  # fmt: skip
    """Gradients of every input given dh (B, NH, S, DHV) and optionally the final states'
    gradients dc, dn, dm. dc0, dn0, dm0 are the initial states' (zeros where not followed)."""
    q, v = _f64(q), _f64(v)
    shape = _shape(q, v)
    b, nh, s, dqk, dhv = shape
    raw = _tfla.reference_backward(
        shape, q.tobytes(), _bytes(k), v.tobytes(), _bytes(i), _bytes(f),
        _bytes(c0), _bytes(n0), _bytes(m0), _bytes(dh), _bytes(dc), _bytes(dn), _bytes(dm),
        variant, normalize, eps, scale, grad_mode,
    )  # fmt: skip
    shapes = [
        (b, nh, s, dqk), (b, nh, s, dqk), (b, nh, s, dhv), (b, nh, s), (b, nh, s),
        (b, nh, dqk, dhv), (b, nh, dqk), (b, nh),
    ]  # fmt: skip
    return Grads(*_arrays(raw, shapes))
