"""A share the upstream already holds that davproxy's store does not know of.

Found when davproxy first takes over an upstream's own sharing (radicale-native: map
shares made in Radicale before davproxy ran), so they can be adopted into the store
rather than removed.  Paths are below the upstream root, in the store's canonical form.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ForeignShare:
    owner: str
    collection: str  # the owner's collection, e.g. "alice/work/"
    sharee: str
    mount: str  # where the sharee sees it, e.g. "bob/alice-work/"
    access: str  # read | read-write
    accepted: bool  # the sharee has enabled it upstream (else: still to be answered)

    def __str__(self) -> str:
        how = "accepted share" if self.accepted else "invitation"
        return (
            f"adopt {self.owner}'s /{self.collection} for {self.sharee} ({self.access})"
            f" as an {how} at /{self.mount}"
        )
