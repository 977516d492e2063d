"""ConnectionManager: the Rust toolkit's rules (docs/BACKEND.md, Connection
manager) and the roster rules of the control-plane contract."""

from __future__ import annotations

import threading

from sse_gateway import INSTANCE_LOST, ConnectionManager, GatewayError, Identity


def manager(rec, **kw) -> ConnectionManager:
    return ConnectionManager(rec, **kw)


def recorder(cm: ConnectionManager, connect: bool = False) -> list:
    seen: list = []
    (cm.register_on_connect if connect else cm.register_on_disconnect)(seen.append)
    return seen


def test_new_connect_stores_both_maps_and_sends_nothing(rec):
    cm = manager(rec)
    info = cm.on_connect("r1", "t1", "/s?request_id=r1")
    assert (info.token, info.url) == ("t1", "/s?request_id=r1")
    assert cm.connection_info("r1") == info
    assert cm.request_id_of("t1") == "r1"
    assert rec.calls == []
    assert len(cm) == 1


def test_connect_observers_run_in_order_with_the_request_id(rec):
    cm = manager(rec)
    seen = []
    for n in range(3):
        cm.register_on_connect(lambda rid, n=n: seen.append(f"{n}:{rid}"))
    cm.on_connect("r1", "t1", "/")
    assert seen == ["0:r1", "1:r1", "2:r1"]


def test_a_failing_observer_does_not_stop_the_others_or_the_registration(rec, caplog):
    cm = manager(rec)
    ran = []

    def boom(rid):
        raise RuntimeError("observer failure")

    cm.register_on_connect(boom)
    cm.register_on_connect(ran.append)
    cm.register_on_disconnect(boom)
    cm.register_on_disconnect(ran.append)
    cm.on_connect("r1", "t1", "/")
    assert ran == ["r1"] and cm.has_connection("r1")
    assert cm.on_disconnect("t1")
    assert ran == ["r1", "r1"]
    assert "observer failure" in caplog.text


def test_observers_run_outside_the_table_lock(rec):
    cm = manager(rec)
    seen = []
    # An observer that reads the table (and sends) would deadlock if the lock were held.
    cm.register_on_connect(lambda rid: seen.append((cm.connection_info(rid).token, cm.send_to(rid, "hi", {}))))
    cm.on_connect("r1", "t1", "/")
    assert seen == [("t1", True)]


def test_replacement_closes_the_old_token_runs_disconnect_observers_once_and_ignores_the_stale_disconnect(rec):
    cm = manager(rec)
    gone = recorder(cm)
    cm.on_connect("r1", "t1", "/", Identity("alice"))
    cm.on_connect("r1", "t2", "/")
    assert rec.calls == [("end", "t1")]
    assert gone == ["r1"]
    assert cm.connection_info("r1").subject is None, "the old subject does not carry over"
    assert len(cm) == 1
    assert not cm.on_disconnect("t1"), "the replaced token's disconnect is ignored"
    assert cm.has_connection("r1") and gone == ["r1"]


def test_a_failing_close_of_the_replaced_stream_is_ignored(rec):
    cm = manager(rec)
    rec.fail = True
    cm.on_connect("r1", "t1", "/")
    cm.on_connect("r1", "t2", "/")
    assert cm.connection_info("r1").token == "t2"


def test_unknown_disconnect_runs_nothing(rec):
    cm = manager(rec)
    gone = recorder(cm)
    assert not cm.on_disconnect("nope")
    assert gone == []


def test_gateway_404_ends_the_connection_once(rec):
    cm = manager(rec)
    gone = recorder(cm)
    cm.on_connect("r1", "t1", "/", Identity("alice"))
    rec.gone.add("t1")
    assert not cm.send_to("r1", "ev", {"x": 1})
    assert not cm.has_connection("r1") and gone == ["r1"]
    assert not cm.on_disconnect("t1"), "the later disconnect callback runs nothing again"
    assert gone == ["r1"]


def test_other_errors_keep_the_mapping_and_unknown_ids_make_no_call(rec):
    cm = manager(rec)
    cm.on_connect("r1", "t1", "/")
    rec.fail = True
    assert not cm.send_to("r1", "ev", {})
    assert not cm.broadcast("ev", {})
    assert cm.has_connection("r1")
    calls = len(rec.calls)
    assert not cm.send_to("unknown", "ev", {})
    assert len(rec.calls) == calls


def test_broadcast_reaches_everyone_or_the_subject_plus_local_user(rec):
    cm = manager(rec)
    cm.on_connect("r1", "t1", "/", Identity("alice"))
    cm.on_connect("r2", "t2", "/", Identity("bob"))
    cm.on_connect("r3", "t3", "/", Identity.local_user())
    cm.on_connect("r4", "t4", "/")
    assert cm.broadcast("ev", {})
    assert rec.targets() == ["t1", "t2", "t3", "t4"]
    rec.calls.clear()
    assert cm.broadcast("ev", {}, subject="alice")
    assert rec.targets() == ["t1", "t3"], "unbound connections get no subject-filtered send"
    rec.calls.clear()
    manager_empty = manager(rec)
    assert not manager_empty.broadcast("ev", {})
    assert rec.calls == []


def test_fan_out_runs_concurrently_with_a_bound(rec):
    cm = manager(rec, fanout_limit=4)
    in_flight, peak, lock = [0], [0], threading.Lock()
    barrier = threading.Barrier(4, timeout=10)
    original = rec.send

    def send(token, name, data, close=False):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        barrier.wait()  # only passes when 4 sends are in flight together
        with lock:
            in_flight[0] -= 1
        return original(token, name, data, close)

    rec.send = send
    for n in range(12):
        cm.on_connect(f"r{n}", f"t{n}", "/")
    assert cm.broadcast("ev", {})
    assert len(rec.targets()) == 12
    assert peak[0] == 4


def test_publish_mode_is_one_publish_per_key_and_a_404_switches_it_off(rec):
    cm = manager(rec, publish=True)
    cm.on_connect("r1", "t1", "/", Identity("alice"))
    cm.on_connect("r2", "t2", "/", Identity("bob"))
    assert cm.broadcast("ev", {})
    assert cm.broadcast("ev", {}, subject="alice")
    assert rec.calls == [("publish", "broadcast", "ev"), ("publish", "subject.alice", "ev")]
    rec.calls.clear()
    cm.on_connect("r3", "t3", "/", Identity.local_user())
    assert cm.broadcast("ev", {}, subject="alice")
    assert rec.calls == [("publish", "subject.alice", "ev"), ("publish", "subject.local-user", "ev")]
    rec.calls.clear()
    rec.publish_error = GatewayError(404, "NOT_FOUND", "no such route")
    assert cm.broadcast("ev", {})
    assert rec.calls[0] == ("publish", "broadcast", "ev")
    assert rec.targets() == ["t1", "t2", "t3"], "fell back to per-token sends"
    rec.calls.clear()
    assert cm.broadcast("ev", {})
    assert all(c[0] == "send" for c in rec.calls), "publish stays off after a 404"


def test_publish_refused_with_403_falls_back_for_that_call_only(rec):
    cm = manager(rec, publish=True)
    cm.on_connect("r1", "t1", "/")
    rec.publish_error = GatewayError(403, "INTERNAL_LISTENER_ONLY", "no")
    assert cm.broadcast("ev", {})
    assert rec.calls == [("publish", "broadcast", "ev"), ("send", "t1", "ev")]
    rec.calls.clear()
    rec.publish_error = None
    assert cm.broadcast("ev", {})
    assert rec.calls == [("publish", "broadcast", "ev")]


def test_bindings_name_broadcast_connection_subject_and_role(rec):
    cm = manager(rec)
    info = cm.on_connect("r1", "t", "/", Identity("alice", "admin"))
    assert ConnectionManager.bindings(info) == ["broadcast", "connection.r1", "subject.alice", "role.admin"]


def test_bind_identity_rebinds_a_live_connection_and_ignores_unknown_ids(rec):
    cm = manager(rec)
    assert not cm.bind_identity("r1", Identity("alice"))
    cm.on_connect("r1", "t1", "/")
    assert cm.bind_identity("r1", Identity("alice"))
    assert cm.connection_info("r1").subject == "alice"
    assert cm.bind_identity("r1", Identity("bob", "ops"))
    assert (cm.connection_info("r1").subject, cm.connection_info("r1").role) == ("bob", "ops")


# -- roster ------------------------------------------------------------


def test_a_roster_removes_the_unlisted_tokens_of_its_instance_only(rec, clock):
    cm = manager(rec, clock=clock)
    gone = recorder(cm)
    cm.on_roster("gw-1", [], 5)
    cm.on_connect("a", "ta", "/", instance="gw-1")
    cm.on_connect("b", "tb", "/", instance="gw-1")
    cm.on_connect("c", "tc", "/", instance="gw-2")
    cm.on_connect("d", "td", "/")  # no instance: never roster-managed
    clock.now += 10
    assert cm.on_roster("gw-1", ["tb", "t-unknown"], 5) == [], "registered after the previous roster: spared once"
    assert cm.on_roster("gw-1", ["tb", "t-unknown"], 5) == ["a"]
    assert gone == ["a"]
    assert [i.request_id for i in sorted(cm.connections(), key=lambda i: i.request_id)] == ["b", "c", "d"]
    assert not cm.has_connection("t-unknown"), "a roster never adds tokens"
    assert cm.on_roster("gw-1", [], 5) == ["b"]
    assert cm.has_connection("c") and cm.has_connection("d")
    cm.shutdown()


def test_a_roster_spares_a_token_registered_after_the_previous_roster(rec, clock):
    cm = manager(rec, clock=clock)
    cm.on_roster("gw-1", [], 5)
    cm.on_connect("a", "ta", "/", instance="gw-1")
    # This roster may have been taken before "ta" existed.
    assert cm.on_roster("gw-1", [], 5) == []
    assert cm.on_roster("gw-1", [], 5) == ["a"]
    cm.shutdown()


def test_an_instance_silent_for_three_intervals_loses_all_its_tokens(rec, clock):
    cm = manager(rec, clock=clock)
    gone = recorder(cm)
    cm.on_connect("a", "ta", "/", instance="gw-1")
    cm.on_connect("b", "tb", "/", instance="gw-2")
    cm.on_connect("c", "tc", "/", instance="gw-3")  # never sent a roster: not watched
    clock.now += 10
    cm.on_roster("gw-1", ["ta"], 5)
    cm.on_roster("gw-2", ["tb"], 5)
    clock.now += 14
    assert cm.expire_silent_instances() == []
    cm.on_roster("gw-2", ["tb"], 5)
    clock.now += 1
    assert cm.expire_silent_instances() == ["a"]
    assert gone == ["a"]
    assert cm.has_connection("b") and cm.has_connection("c")
    cm.shutdown()


def test_the_silence_watch_fires_on_its_own(rec):
    cm = manager(rec)
    lost = threading.Event()
    cm.register_on_disconnect(lambda rid: rid == "a" and lost.set())
    cm.on_connect("a", "ta", "/", instance="gw-1")
    cm.on_roster("gw-1", ["ta"], 0.05)
    assert lost.wait(10), "3 x 0.05 s without a roster removes the instance's tokens"
    assert not cm.has_connection("a")
    cm.shutdown()


def test_instance_lost_is_the_reason_name():
    assert INSTANCE_LOST == "instance_lost"


def test_with_nobody_connected_a_publishing_manager_still_publishes_for_the_gateway_history(rec):
    cm = manager(rec, publish=True)
    cm.broadcast("ev", {})
    cm.broadcast("ev", {}, subject="alice")
    assert rec.calls == [
        ("publish", "broadcast", "ev"),
        ("publish", "subject.alice", "ev"),
        ("publish", "subject.local-user", "ev"),
    ], "a client that was away gets it replayed when it resumes"
