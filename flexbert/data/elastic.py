"""Re-split a saved loader position over a different number of ranks or packing partitions.

The epoch's global sample order does not depend on the rank count; only its cut into
`ranks x pack_parts` slices does. So a saved position is turned into what is left: the unread
parts of every old slice (as ranges of positions in an epoch's order) and the leftover pieces.
Those are dealt to the new partitions, which read their share first and then start the next
epoch in the new layout. Every sample of the interrupted epoch is read exactly once.
"""

from __future__ import annotations

from typing import Callable


def fresh_part() -> dict:
    return {"epoch": 0, "cursor": 0, "pending": [], "carry": []}


def resplit(state: dict, world_size: int, pack_parts: int, epoch_size: Callable[[int], int]) -> list[dict]:
    """Per-rank progress dicts for `world_size` ranks from a state saved with another layout."""
    step, parts = _old_parts(state)
    new_total = world_size * pack_parts
    first_new_epoch, ranges = _remaining(parts, epoch_size)
    carries = _deal_ranges(ranges, new_total)
    pending = _deal_pending([p for part in parts for p in part["pending"]], new_total)
    return [{"next_batch": step,
             "parts": {v: {"epoch": first_new_epoch, "cursor": 0, "pending": pending[r * pack_parts + v],
                           "carry": carries[r * pack_parts + v]} for v in range(pack_parts)}}
            for r in range(world_size)]


def _old_parts(state: dict) -> tuple[int, list[dict]]:
    """Every old partition's state in global partition order (unused ones start fresh)."""
    ranks = state["ranks"]
    missing = [r for r, s in enumerate(ranks) if s is None]
    if missing:
        raise ValueError(f"data loader state: rank {missing[0]}'s progress is missing, so the data "
                         f"cannot be re-split over a new rank count; resume with "
                         f"{state['world_size']} ranks")
    steps = {int(s["next_batch"]) for s in ranks}
    if len(steps) != 1:
        raise ValueError(f"data loader state: ranks stopped at different batches {sorted(steps)}; "
                         f"resume with {state['world_size']} ranks")
    parts = []
    for s in ranks:
        saved = {int(v): p for v, p in s["parts"].items()}
        parts += [saved.get(v) or fresh_part() for v in range(int(state["pack_parts"]))]
    return steps.pop(), parts


def _remaining(parts: list[dict], epoch_size: Callable[[int], int]) -> tuple[int, list[list[int]]]:
    """Unread [epoch, lo, hi) position ranges of all old partitions, up to the furthest epoch."""
    total = len(parts)
    last = max(int(p["epoch"]) for p in parts)
    ranges = []
    for i, p in enumerate(parts):
        ranges += [[int(e), int(lo), int(hi)] for e, lo, hi in p.get("carry", []) if lo < hi]
        for e in range(int(p["epoch"]), last + 1):
            n = epoch_size(e)
            lo, hi = i * n // total, (i + 1) * n // total
            start = lo + int(p["cursor"]) if e == int(p["epoch"]) else lo
            if start < hi:
                ranges.append([e, start, hi])
    return last + 1, _merge(sorted(ranges))


def _merge(ranges: list[list[int]]) -> list[list[int]]:
    """Join touching ranges of the same epoch so the state stays a handful of numbers."""
    out: list[list[int]] = []
    for e, lo, hi in ranges:
        if out and out[-1][0] == e and out[-1][2] == lo:
            out[-1][2] = hi
        else:
            out.append([e, lo, hi])
    return out


def _deal_ranges(ranges: list[list[int]], n_parts: int) -> list[list[list[int]]]:
    """Cut the ranges, in order, into n_parts runs of (nearly) equal sample counts."""
    total = sum(hi - lo for _, lo, hi in ranges)
    bounds = [j * total // n_parts for j in range(n_parts + 1)]
    out: list[list[list[int]]] = [[] for _ in range(n_parts)]
    pos, j = 0, 0
    for e, lo, hi in ranges:
        while lo < hi:
            while pos >= bounds[j + 1]:
                j += 1
            take = min(hi - lo, bounds[j + 1] - pos)
            out[j].append([e, lo, lo + take])
            lo, pos = lo + take, pos + take
    return out


def _deal_pending(pending: list, n_parts: int) -> list[list]:
    """Leftover pieces to the partition holding the fewest tokens; a document's pieces stay
    together so each is re-read once."""
    by_doc: dict[int, list] = {}
    for p in pending:
        by_doc.setdefault(int(p[0]), []).append([int(x) for x in p])
    out: list[list] = [[] for _ in range(n_parts)]
    load = [0] * n_parts
    for pieces in by_doc.values():
        j = load.index(min(load))
        out[j] += pieces
        load[j] += sum(b - a for _, a, b, _ in pieces)
    return out
