"""Every derived id is the standard library's version-5 UUID of its namespace and name: the fast
formatting (:func:`uuid_from_sha1`) and the precomputed prefixes of the per-event paths included."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from processors.contracts import ids

names = st.text(max_size=30)


@given(names, st.sampled_from([ids.EVENT_ID_NAMESPACE, ids.EMIT_KEY_NAMESPACE, ids.CHILD_KEY_NAMESPACE]))
def test_uuid_from_sha1_equals_uuid5(name, namespace):
    assert ids.uuid_from_sha1(namespace.bytes + name.encode()) == ids.uuid5_reference(namespace, name)
    assert ids.uuid5_reference(namespace, name) == str(uuid.uuid5(namespace, name))


@given(names, names, names, st.integers(0, 10**6))
def test_each_derived_id_is_uuid5_of_its_name(cause, agent, event_type, n):
    sep = "\x1f"
    assert ids.derived_id(cause) == ids.uuid5_reference(ids.EVENT_ID_NAMESPACE, cause)
    assert ids.emit_key(cause, agent, event_type, n) == ids.uuid5_reference(
        ids.EMIT_KEY_NAMESPACE, f"{cause}{sep}{agent}{sep}{event_type}{sep}{n}"
    )
    assert ids.child_key(cause, event_type) == ids.uuid5_reference(ids.CHILD_KEY_NAMESPACE, f"{cause}{sep}{event_type}")
    assert ids.audit_id(agent, cause, "PROCESSED") == ids.uuid5_reference(
        ids.EVENT_ID_NAMESPACE, f"audit{sep}{agent}{sep}{cause}{sep}PROCESSED"
    )
    assert ids.uuid_from_sha1(ids.audit_id_prefix(agent) + f"{cause}{sep}DUPLICATE".encode()) == ids.audit_id(
        agent, cause, "DUPLICATE"
    )
    assert ids.timer_id(agent, cause, event_type, n) == ids.derived_id(
        f"timer{sep}{agent}{sep}{cause}{sep}{event_type}{sep}{n}"
    )
    assert ids.coordinates_id(event_type, 3, n) == ids.derived_id(f"coords{sep}{event_type}/3/{n}")


def test_the_namespaces_are_the_ones_on_the_wire():
    assert str(ids.EVENT_ID_NAMESPACE) == "7d0d8a52-0a43-4b7e-8f39-2b1b9d6a4c11"
    assert str(ids.EMIT_KEY_NAMESPACE) == "2f1d9a8e-6c1b-4f4e-9a57-0c3b7d8e5a10"
    assert str(ids.CHILD_KEY_NAMESPACE) == "5b0c4a9e-3f57-4c0e-9d4b-2f4d7c1e8a61"
    assert ids.child_key("checkout-42", "payment.authorized") == str(
        uuid.uuid5(uuid.UUID("5b0c4a9e-3f57-4c0e-9d4b-2f4d7c1e8a61"), "checkout-42\x1fpayment.authorized")
    )
