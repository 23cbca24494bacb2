"""The local broker's KRaft cluster ids are always accepted by the storage tool."""

from __future__ import annotations

import base64

from processors.localbroker.broker import kraft_cluster_id


def test_cluster_ids_never_begin_with_a_dash() -> None:
    # 1 in 64 random ids begins with '-'; the storage tool then read it as an option and the
    # broker failed to format. 5,000 draws would meet one with near certainty.
    ids = [kraft_cluster_id() for _ in range(5000)]
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert len(set(ids)) == len(ids)
