"""Call and prediction ids drawn from the pooled random bytes stay unique."""

from __future__ import annotations

import os
import pickle
import threading
import uuid

from commands.ids import new_call_id, new_uuid


def test_ids_are_unique_across_threads_and_uuids_are_version_4() -> None:
    seen: list[list[str]] = [[] for _ in range(4)]

    def draw(into: list[str]) -> None:
        into.extend(new_call_id() for _ in range(5000))

    threads = [threading.Thread(target=draw, args=(bucket,)) for bucket in seen]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [cid for bucket in seen for cid in bucket]
    assert len(set(every)) == len(every) == 20000
    assert all(len(cid) == 32 for cid in every)
    assert new_uuid().version == 4


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    new_call_id()  # the pool now holds unused ids the child must not reuse
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave at once
        os.write(write, "".join(new_call_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 4096).decode()
    os.close(read)
    parent = "".join(new_call_id() for _ in range(10))
    child_ids = {child[i : i + 32] for i in range(0, len(child), 32)}
    parent_ids = {parent[i : i + 32] for i in range(0, len(parent), 32)}
    assert len(child_ids) == 10
    assert not child_ids & parent_ids


def test_new_uuids_are_exactly_what_the_uuid_module_makes_of_their_bytes() -> None:
    for _ in range(1000):
        made = new_uuid()
        standard = uuid.UUID(bytes=made.bytes, version=4)
        assert made == standard
        assert (str(made), hash(made), made.variant) == (
            str(standard),
            hash(standard),
            uuid.RFC_4122,
        )
        assert pickle.loads(pickle.dumps(made)) == made
    assert len({new_uuid() for _ in range(1000)}) == 1000
