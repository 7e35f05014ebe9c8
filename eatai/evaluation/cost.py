"""What an evaluation's attacks cost: seconds per point of each step, the floor of a run, the order that nears it.

A step is one attack in one threat. From a result's per-step log (`RobustResult.steps`: which points
each step attacked and broke, in how many seconds) the floor is the least work any order of the same
steps could have spent for the same verdicts: a union-robust point must get every step, a broken
point only the cheapest step known to break it. `union_only` runs the steps in `greedy_order`.
"""
from __future__ import annotations

__all__ = ['step_costs', 'cost_floor', 'greedy_order']


def _step(entry: dict) -> tuple[str, str]:
    return entry['threat'], entry['attack']


def step_costs(steps: list[dict]) -> dict[tuple[str, str], float]:
    """(threat, attack) -> seconds per attacked point, over every log entry of that step."""
    seconds, points = {}, {}
    for entry in steps:
        key = _step(entry)
        seconds[key] = seconds.get(key, 0.0) + entry['seconds']
        points[key] = points.get(key, 0) + entry['attacked']
    return {key: seconds[key] / points[key] for key in seconds if points[key]}


def cost_floor(result) -> float:
    """Seconds the cheapest order of `result`'s steps would have spent for its verdicts (see the module's
    docstring); step costs per point come from the same log."""
    costs = step_costs(result.steps)
    breakers: dict[int, list[float]] = {}
    for entry in result.steps:
        for i in entry['broken']:
            breakers.setdefault(i, []).append(costs[_step(entry)])
    every_step = sum(costs.values())
    clean = [i for i, ok in enumerate(result.flags['clean']) if ok]
    return sum(min(breakers[i]) if i in breakers else every_step for i in clean)


def greedy_order(stats: dict[tuple, tuple[int, int, float]]) -> list[tuple]:
    """Steps ordered by what breaks most per second first, from (attacked, broken, seconds) per step.

    A step's rate is broken / seconds on the points it attacked; with no point attacked it goes last,
    in the given order (ties keep it too)."""
    def rate(item):
        attacked, broken, seconds = item[1]
        return broken / seconds if attacked and seconds > 0 else -1.0
    return [key for key, _ in sorted(stats.items(), key=rate, reverse=True)]
