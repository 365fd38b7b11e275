"""What the upstream-enforcing backends (radicale-native, acl) share: applying the
store's shares again for owners the upstream has not confirmed yet."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from davproxy.dav.errors import PlainError


async def apply_each(
    apply: Callable[[str], Awaitable[object]], owners: Iterable[str], upstream: str
) -> None:
    """``apply`` every owner, in name order; one 502 naming those still refused."""
    failed = []
    for owner in sorted(owners):
        try:
            await apply(owner)
        except PlainError:
            failed.append(owner)
    if failed:
        raise PlainError(502, f"Upstream {upstream} still refuses: {', '.join(failed)}")
