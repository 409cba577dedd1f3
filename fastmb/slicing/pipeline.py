"""Micro-batches through a pipeline of stages: when each runs, and what that costs.

A mini-batch split into ``m`` micro-batches goes through ``p`` stages (the slices of a
split model: the client's layers, the server's, in U-shaped learning the client's top
layers) joined by links. :func:`timeline` lays out a schedule's operations (each stage
runs one at a time, in the schedule's order; an operation starts when its stage is free
and its inputs have crossed the link) and reports the time per mini-batch, each stage's
idle fraction, the activations each stage holds at its peak, and the bytes each way.

Schedules:

* ``"gpipe"`` (fill-drain, Huang et al. 2019): every stage runs the m forwards, then the m
  backwards (the last micro-batch's first).
* ``"1f1b"`` (one forward, one backward; PipeDream-Flush, Narayanan et al. 2021): stage s
  runs ``p - s - 1`` forwards to fill the pipeline, then alternates a forward and a
  backward, then drains. Same bubble as GPipe, at most ``p - s`` micro-batches of
  activations held on stage s instead of m.

For equal stages (and free links) the idle fraction is ``(p - 1) / (m + p - 1)`` under both;
a forward-only pipeline of stage times ``t`` takes ``sum(t) + (m - 1) max(t)``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import _validation as V

SCHEDULES = ("gpipe", "1f1b")


class Timeline(NamedTuple):
    """:func:`timeline`'s report for one mini-batch."""

    makespan: float               # seconds from the first forward to the last backward
    busy: np.ndarray              # (p,) seconds each stage computes
    idle_fraction: float          # 1 - sum(busy) / (p * makespan)
    stage_idle: np.ndarray        # (p,) each stage's idle share of the makespan
    peak_micro: np.ndarray        # (p,) micro-batches whose activations a stage holds at most
    activation_bytes: np.ndarray  # (p,) peak_micro * the stage's activation bytes
    bytes_up: int                 # forward direction, all links, per mini-batch
    bytes_down: int               # backward direction
    ops: list                     # (stage, "F" or "B", micro-batch, start, end)


def _order(schedule, p, m, s):
    """Stage s's operations, in order: ``("F", i)`` and ``("B", i)``."""
    if schedule == "gpipe":
        return [("F", i) for i in range(m)] + [("B", i) for i in range(m - 1, -1, -1)]
    warm = min(m, p - s - 1)
    ops = [("F", i) for i in range(warm)]
    f, b = warm, 0
    while b < m:
        if f < m:
            ops.append(("F", f))
            f += 1
        ops.append(("B", b))
        b += 1
    return ops


def timeline(forward_s, backward_s, microbatches, schedule="gpipe", *, up_bytes=None,
             down_bytes=None, bandwidth=None, latency=0.0, activation_bytes=None):
    """Lay out one mini-batch of ``microbatches`` micro-batches on a pipeline of stages.

    Parameters
    ----------
    forward_s, backward_s : sequence of float (p,)
        Seconds one micro-batch's forward and backward take on each stage (measured, or a
        device's known speed). ``backward_s`` all zero: a forward-only pipeline.
    microbatches : int
    schedule : {"gpipe", "1f1b"}
    up_bytes, down_bytes : sequence of int (p - 1,), optional
        Bytes one micro-batch sends across link s (between stages s and s + 1) going up
        (activations) and coming down (gradients). Default zero.
    bandwidth : float, optional
        Link bandwidth in bytes per second (each direction of each link carries one
        transfer at a time); None: transfers cost only ``latency``.
    latency : float
        Seconds added to every transfer.
    activation_bytes : sequence of int (p,), optional
        Bytes of the activations a stage keeps per micro-batch between its forward and its
        backward; default zero.

    Returns
    -------
    Timeline

    Examples
    --------
    >>> from fastmb.slicing import timeline
    >>> t = timeline([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], microbatches=4)
    >>> t.makespan, round(t.idle_fraction, 4), round(2 / 6, 4)   # (p - 1) / (m + p - 1)
    (12.0, 0.3333, 0.3333)
    >>> timeline([1.0, 3.0, 2.0], [0.0, 0.0, 0.0], microbatches=5).makespan   # 6 + 4 * 3
    18.0
    """
    f = np.asarray(forward_s, np.float64)
    bw = np.asarray(backward_s, np.float64)
    if f.ndim != 1 or f.shape[0] < 1 or bw.shape != f.shape:
        raise ValueError("forward_s and backward_s must be 1-D sequences of the same length "
                         f"(one time per stage), got shapes {f.shape} and {bw.shape}")
    if not (np.isfinite(f).all() and np.isfinite(bw).all() and (f >= 0).all()
            and (bw >= 0).all()):
        raise ValueError("stage times must be finite and non-negative")
    p = f.shape[0]
    m = V.check_number("microbatches", microbatches, low=1, integer=True)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    up = np.zeros(p - 1) if up_bytes is None else np.asarray(up_bytes, np.float64)
    down = np.zeros(p - 1) if down_bytes is None else np.asarray(down_bytes, np.float64)
    act = np.zeros(p) if activation_bytes is None else np.asarray(activation_bytes, np.float64)
    if up.shape != (p - 1,) or down.shape != (p - 1,) or act.shape != (p,):
        raise ValueError(f"up_bytes and down_bytes need {p - 1} values (one per link), "
                         f"activation_bytes {p} (one per stage)")
    if bandwidth is not None:
        bandwidth = V.check_number("bandwidth", bandwidth, low=0, low_open=True)
    latency = V.check_number("latency", latency, low=0)

    def transfer(nbytes):
        return latency + (0.0 if bandwidth is None else nbytes / bandwidth)

    orders = [_order(schedule, p, m, s) for s in range(p)]
    done = {}                       # (kind, i, s) -> end time
    arrive = {}                     # (kind, i, s) -> time its input is at stage s
    link_free = {("up", s): 0.0 for s in range(p - 1)} | {("down", s): 0.0
                                                            for s in range(p - 1)}
    stage_free = [0.0] * p
    pos = [0] * p
    ops = []
    held = [0] * p
    peak = [0] * p
    remaining = sum(len(o) for o in orders)
    while remaining:
        progressed = False
        for s in range(p):
            if pos[s] == len(orders[s]):
                continue
            kind, i = orders[s][pos[s]]
            if kind == "F":
                ready = 0.0 if s == 0 else arrive.get(("F", i, s))
            else:
                ready = done.get(("F", i, s)) if s == p - 1 else arrive.get(("B", i, s))
                if ready is not None and s < p - 1:
                    ready = max(ready, done[("F", i, s)])
            if ready is None:
                continue
            start = max(stage_free[s], ready)
            end = start + (f[s] if kind == "F" else bw[s])
            stage_free[s] = end
            done[(kind, i, s)] = end
            ops.append((s, kind, i, start, end))
            if kind == "F":
                held[s] += 1
                peak[s] = max(peak[s], held[s])
                if s < p - 1:
                    key = ("up", s)
                    t0 = max(end, link_free[key])
                    link_free[key] = t0 + (0.0 if bandwidth is None else up[s] / bandwidth)
                    arrive[("F", i, s + 1)] = t0 + transfer(up[s])
            else:
                held[s] -= 1
                if s > 0:
                    key = ("down", s - 1)
                    t0 = max(end, link_free[key])
                    link_free[key] = t0 + (0.0 if bandwidth is None else down[s - 1]
                                           / bandwidth)
                    arrive[("B", i, s - 1)] = t0 + transfer(down[s - 1])
            pos[s] += 1
            remaining -= 1
            progressed = True
        if not progressed:   # cannot happen with these schedules; a guard, not a loop
            raise RuntimeError("the pipeline schedule deadlocked")
    makespan = max(e for *_, e in ops) if ops else 0.0
    busy = m * (f + bw)
    if makespan > 0:
        stage_idle = 1.0 - busy / makespan
        idle = 1.0 - busy.sum() / (p * makespan)
    else:
        stage_idle, idle = np.zeros(p), 0.0
    peak = np.asarray(peak, np.int64)
    return Timeline(float(makespan), busy, float(idle), stage_idle, peak, peak * act,
                    int(m * up.sum()), int(m * down.sum()), ops)
