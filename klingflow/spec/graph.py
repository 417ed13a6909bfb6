"""Cycles among steps, each named in full: `a -> b -> a`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from klingflow.spec.pipeline import Step


def find_cycles(steps: Sequence[Step]) -> Iterator[list[str]]:
    """Each cycle once, as the ids along it, starting at its first step in file order."""
    needs: Mapping[str, tuple[str, ...]] = {s.id: s.needs for s in steps}
    order = {s.id: n for n, s in enumerate(steps)}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    seen: set[frozenset[str]] = set()
    for step in steps:
        for cycle in _walk(step.id, needs, state):
            if frozenset(cycle) not in seen:
                seen.add(frozenset(cycle))
                yield _rotate(cycle, order)


def _walk(start: str, needs: Mapping[str, tuple[str, ...]],
          state: dict[str, int]) -> Iterator[list[str]]:
    """Depth-first, iteratively (10,000 chained steps must not hit the recursion limit)."""
    if state.get(start):
        return
    path, stack = [start], [iter(needs.get(start, ()))]
    state[start] = 1
    while stack:
        nxt = next(stack[-1], None)
        if nxt is None:
            state[path.pop()] = 2
            stack.pop()
        elif state.get(nxt) == 1:
            yield path[path.index(nxt):]
        elif not state.get(nxt) and nxt in needs:
            state[nxt] = 1
            path.append(nxt)
            stack.append(iter(needs[nxt]))


def _rotate(cycle: list[str], order: Mapping[str, int]) -> list[str]:
    first = min(range(len(cycle)), key=lambda i: order[cycle[i]])
    return cycle[first:] + cycle[:first]
