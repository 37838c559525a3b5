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
) -> list[int]:
    """Job ids of `queued` in the order they will run (first `limit` only when given)."""
    remaining = sorted(queued, key=lambda p: (p.created_at, p.job_id))
    users = dict(user_served)
    groups = dict(group_served)
    tick = max([0.0, *users.values(), *groups.values()]) + 1.0
    order: list[int] = []
    while remaining and (limit is None or len(order) < limit):
        oldest_in_group: dict[str, Pending] = {}
        for p in remaining:  # remaining is age-sorted, so the first seen is the oldest
            oldest_in_group.setdefault(p.group, p)
        group = min(
            oldest_in_group,
            key=lambda g: (groups.get(g, NEVER), oldest_in_group[g].created_at, oldest_in_group[g].job_id),
        )
        oldest_of_user: dict[str, Pending] = {}
        for p in remaining:
            if p.group == group:
                oldest_of_user.setdefault(p.user_id, p)
        user = min(
            oldest_of_user,
            key=lambda u: (users.get(u, NEVER), oldest_of_user[u].created_at, oldest_of_user[u].job_id),
        )
        pick = oldest_of_user[user]
        order.append(pick.job_id)
        remaining.remove(pick)
        users[user] = groups[group] = tick
        tick += 1.0
    return order
