"""A big feed's split: resources fingerprinted only when asked for, the memo packed.

Above ``_KEEP_LINES_BELOW`` bytes of components, ``split_feed`` keeps no lines and
fingerprints a resource the memo does not know only when someone asks (the refresher
asks as it writes).  Whatever is asked in whatever order, the result must be that of a
full line-by-line read, and the memo must know every fingerprint it was told.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from davproxy.feeds import split as split_mod
from davproxy.feeds.memo import recorded
from davproxy.feeds.split import split_feed
from tests.unit.test_feed_split_memo import feeds, line_by_line, same


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pair=feeds(), asked=st.integers(0, 3))
def test_lazy_split_and_packed_memo_agree_with_reading_every_line(
    pair: tuple[bytes, bytes], asked: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = pair
    whole_old, whole_new = line_by_line(old, monkeypatch), line_by_line(new, monkeypatch)
    with monkeypatch.context() as patch:
        patch.setattr(split_mod, "_KEEP_LINES_BELOW", 0)
        first = split_feed(old)
        assert not first.resources.built  # type: ignore[attr-defined]
        # the refresher's first import asks for resources before any fingerprint
        for uid in list(first.resources)[:asked]:
            assert first.resources[uid] == whole_old.resources[uid]
        same(first, whole_old)
        assert first.memo is not None
        assert recorded(first.memo) == whole_old.fingerprints()
        second = split_feed(new, first.memo)
        same(second, whole_new)
        assert second.memo is not None
        assert recorded(second.memo) == whole_new.fingerprints()
        # a third split with the second's memo (records carried twice) still agrees
        same(split_feed(old, second.memo), whole_old)
