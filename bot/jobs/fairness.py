"""Fair order of queued jobs: two-level round-robin by "least recently served".

Every job has a scheduling group: the group (room) id for group chats, `"u:<user_id>"` for private
chats (so a private user competes like a one-person group). "Served" means a job was started
(`started_at`, any state, any time in the past).

The next job is chosen like this:

1. Among groups with queued jobs, take the group served least recently (never served comes first).
   Ties: the group whose oldest queued job is older, then the smaller job id.
2. Within that group, take the user served least recently (never first; same tie-breaks).
3. Run that user's oldest queued job (created_at, then id).

The whole future order is the same rule applied repeatedly, each pick counting as "served now".
So with A's ten jobs queued before B's one, the order is A1, B1, A2, A3, … ; and a busy group with
many users cannot starve a small group: groups alternate, and users alternate inside a group.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

NEVER = float("-inf")


@dataclass(frozen=True, slots=True)
class Pending:
    job_id: int
    user_id: str
    group: str  # scheduling group
    created_at: float


def sched_group(group_id: str | None, user_id: str) -> str:
    return group_id if group_id else f"u:{user_id}"


def fair_order(
    queued: Iterable[Pending],
    user_served: Mapping[str, float],
    group_served: Mapping[str, float],
    limit: int | None = None,
    until: int | None = None,
) -> list[int]:
    """Job ids of `queued` in the order they will run (first `limit` only when given; stopping after job
    `until` when given). O(n log n):
    a heap of groups keyed by (last served, oldest job), and per group a heap of users keyed the same."""
    by_user: dict[tuple[str, str], deque[Pending]] = {}
    for p in sorted(queued, key=lambda p: (p.created_at, p.job_id)):
        by_user.setdefault((p.group, p.user_id), deque()).append(p)
    user_heaps: dict[str, list[tuple[float, float, int, str]]] = {}
    oldest_in_group: dict[str, Pending] = {}
    for (group, user), jobs in by_user.items():
        first = jobs[0]
        user_heaps.setdefault(group, []).append((user_served.get(user, NEVER), first.created_at, first.job_id, user))
        best = oldest_in_group.get(group)
        if best is None or (first.created_at, first.job_id) < (best.created_at, best.job_id):
            oldest_in_group[group] = first
    groups = [(group_served.get(g, NEVER), p.created_at, p.job_id, g) for g, p in oldest_in_group.items()]
    heapq.heapify(groups)
    for heap in user_heaps.values():
        heapq.heapify(heap)
    # a user can appear in several groups; their "served" time is shared across groups
    served = dict(user_served)
    tick = max([0.0, *user_served.values(), *group_served.values()]) + 1.0
    order: list[int] = []
    while groups and (limit is None or len(order) < limit):
        _, _, _, group = heapq.heappop(groups)
        heap = user_heaps[group]
        while True:  # drop stale entries of users served meanwhile in another group
            key, created, job_id, user = heapq.heappop(heap)
            current = served.get(user, NEVER)
            if key == current:
                break
            first = by_user[(group, user)][0]
            heapq.heappush(heap, (current, first.created_at, first.job_id, user))
        jobs = by_user[(group, user)]
        picked = jobs.popleft().job_id
        order.append(picked)
        if picked == until:
            break
        served[user] = tick
        if jobs:
            heapq.heappush(heap, (tick, jobs[0].created_at, jobs[0].job_id, user))
        if heap:
            heapq.heappush(groups, (tick, 0.0, 0, group))
        tick += 1.0
    return order
