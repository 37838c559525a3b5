"""Channel-namespaced ids: `<channel>:<platform id>`.

Every id the core stores (chat, user, message) carries the channel it came from, so quotas, admins,
bans, the ledger and the audit never mix two platforms' ids: `clawbot:o9cq…@im.wechat`,
`wecom:zhangsan`, `qq:<member_openid>`. A bare id (no known prefix) means wechaty, so existing
databases and `bot.admins` lists stay valid. The local/playground channels keep bare ids as well.
"""

from __future__ import annotations

# Prefixes of the official channels. wechaty, local and the playground use bare ids.
NAMESPACED = frozenset({"clawbot", "wecom", "qq"})


def qualify(channel: str, platform_id: str) -> str:
    """`qualify("qq", "ABC")` → `"qq:ABC"`."""
    return f"{channel}:{platform_id}"


def split(qualified: str) -> tuple[str | None, str]:
    """`"qq:ABC"` → `("qq", "ABC")`; a bare id → `(None, id)`. Only known prefixes count, so a wechaty
    id that happens to contain a colon stays bare."""
    head, sep, rest = qualified.partition(":")
    if sep and head in NAMESPACED:
        return head, rest
    return None, qualified


def local_part(channel: str, qualified: str) -> str:
    """The platform id of `qualified`, which must belong to `channel`."""
    owner, rest = split(qualified)
    if owner != channel:
        raise ValueError(f"id {qualified!r} does not belong to channel {channel}")
    return rest
