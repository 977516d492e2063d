"""The connection table: ``request_id`` <-> gateway token, one live stream per
``request_id``, identities, observers, roster bookkeeping, and the ways to
address streams (targeted, broadcast, per subject).

The Python counterpart of the Rust toolkit's ``connections::ConnectionManager``
(docs/BACKEND.md, Connection manager), with the same rules:

- one lock guards map updates only; every gateway call and every observer
  runs after it is released, on a snapshot;
- a connect for a ``request_id`` that has a live stream *replaces* it: the old
  token is closed at the gateway (a failure is logged and ignored), the
  disconnect observers run for it, then the connect observers run;
- a disconnect of an unknown or replaced token is ignored;
- observers are isolated: an exception is logged and the next one still runs;
- a targeted send that the gateway answers 404 ends the connection exactly
  like a disconnect;
- rosters (control plane): tokens of an instance that its roster does not
  list, and all tokens of an instance silent for 3 roster intervals, are
  removed with reason ``instance_lost``.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Iterable, List, Optional

from .client import Client, GatewayError

__all__ = [
    "ConnectionInfo",
    "ConnectionManager",
    "Identity",
    "LOCAL_USER",
    "Observer",
    "INSTANCE_LOST",
    "REPLACED",
    "NOT_FOUND",
]

log = logging.getLogger("sse_gateway.connections")

#: The subject of every connection when no identity provider is configured;
#: it receives every subject-filtered broadcast.
LOCAL_USER = "local-user"

#: Disconnect reasons the manager adds to the gateway's own
#: (``client_closed``, ``server_closed``, ``error``); used in log lines.
REPLACED = "replaced"
NOT_FOUND = "not_found"
INSTANCE_LOST = "instance_lost"

#: How many roster intervals an instance may stay silent before its tokens go.
SILENT_INTERVALS = 3

#: Per-token sends in flight at once in the fallback fan-out.
DEFAULT_FANOUT_LIMIT = 32

#: An observer of connects or disconnects, called with the ``request_id``.
Observer = Callable[[str], Any]


@dataclass(frozen=True)
class Identity:
    """Who is behind a stream: ``subject`` (the JWT ``sub``, or
    :data:`LOCAL_USER`), optional ``role``, and optional ``expires_at`` (unix
    seconds; sent in the connect answer so the gateway ends the stream with
    ``auth_expired`` then)."""

    subject: str
    role: Optional[str] = None
    expires_at: Optional[float] = None

    @classmethod
    def local_user(cls) -> "Identity":
        """The identity of every connection when identification is off."""
        return cls(LOCAL_USER)


@dataclass(frozen=True)
class ConnectionInfo:
    """What the table knows about one live connection."""

    request_id: str
    token: str
    url: str
    subject: Optional[str] = None
    role: Optional[str] = None
    #: The gateway instance from the connect callback (roster on), else None:
    #: such a connection is never roster-managed.
    instance: Optional[str] = None
    #: ``time.monotonic()``-style clock reading when it connected.
    connected_at: float = 0.0
    #: How many rosters its instance had sent when it connected: a roster
    #: removes it only if it was registered before the previous one arrived.
    roster_epoch: int = 0
    #: The client resumes a stream it had (it sent ``Last-Event-ID`` or
    #: ``lastEventId``). With the gateway's history on it is the same client:
    #: it gets what it missed from the gateway (or an ``event: gap``, after
    #: which it refetches), so connect observers should not repeat what they
    #: sent it before.
    resumed: bool = False


@dataclass
class _RosterWatch:
    last_seen: float
    interval_seconds: float
    timer: Optional[threading.Timer] = None
    #: Rosters received from this instance.
    received: int = 0


class ConnectionManager:
    """The connection table of one backend process. Thread-safe.

    ``client`` sends to the gateway. ``publish=True`` makes broadcasts one
    ``/internal/publish`` per routing key (the gateway must be given the
    bindings of :meth:`bindings` in the connect answer, which the callback
    handler does in ``routing`` answer mode); a gateway answering 404/405 to
    a publish turns publishing off for good (a plain compatible gateway), and
    401/403 falls back to per-token sends for that call.

    A roster removes only the tokens registered before the previous roster
    of their instance arrived: a roster taken just before a connect but
    delivered after it must not remove the new stream (the Rust toolkit's
    rule; a missing token goes at the second roster after its connect).
    """

    def __init__(
        self,
        client: Client,
        *,
        publish: bool = False,
        fanout_limit: int = DEFAULT_FANOUT_LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self._publish = publish
        self._fanout_limit = max(1, fanout_limit)
        self._clock = clock
        self._lock = threading.Lock()
        self._by_request: Dict[str, ConnectionInfo] = {}
        self._by_token: Dict[str, str] = {}
        self._rosters: Dict[str, _RosterWatch] = {}
        self._observers_lock = threading.Lock()
        self._on_connect: List[Observer] = []
        self._on_disconnect: List[Observer] = []

    # -- observers -----------------------------------------------------

    def register_on_connect(self, fn: Observer) -> Observer:
        """Adds a connect observer (never removed); usable as a decorator.
        It runs inside the connect callback, so an event it sends to the new
        stream is buffered by the gateway and written before ``ready``."""
        with self._observers_lock:
            self._on_connect.append(fn)
        return fn

    def register_on_disconnect(self, fn: Observer) -> Observer:
        """Adds a disconnect observer (never removed); usable as a decorator.
        It runs once per ended connection: disconnect callback, replacement,
        gateway 404, or ``instance_lost``."""
        with self._observers_lock:
            self._on_disconnect.append(fn)
        return fn

    def _run_observers(self, connect: bool, request_id: str) -> None:
        with self._observers_lock:
            observers = list(self._on_connect if connect else self._on_disconnect)
        what = "connect" if connect else "disconnect"
        for fn in observers:
            try:
                fn(request_id)
            except Exception:  # isolated: log, go on, undo nothing
                log.exception("%s observer %r failed for request_id %s", what, fn, request_id)

    # -- connect / disconnect ------------------------------------------

    def on_connect(
        self,
        request_id: str,
        token: str,
        url: str,
        identity: Optional[Identity] = None,
        instance: Optional[str] = None,
        resumed: bool = False,
    ) -> ConnectionInfo:
        """Registers a new stream for ``request_id`` with its identity (bound
        before any observer runs), replacing and closing any previous stream
        of that id; then runs the disconnect observers for the replaced one
        and the connect observers for the new one, outside the lock.
        ``resumed``: see :attr:`ConnectionInfo.resumed`."""
        with self._lock:
            watch = self._rosters.get(instance) if instance is not None else None
            info = ConnectionInfo(
                request_id=request_id,
                token=token,
                url=url,
                subject=identity.subject if identity else None,
                role=identity.role if identity else None,
                instance=instance,
                connected_at=self._clock(),
                roster_epoch=watch.received if watch is not None else 0,
                resumed=resumed,
            )
            replaced = self._by_request.get(request_id)
            self._by_request[request_id] = info
            if replaced is not None:
                self._by_token.pop(replaced.token, None)
            self._by_token[token] = request_id
        if replaced is not None:
            log.info("request_id %s reconnected: closing its previous stream %s", request_id, replaced.token)
            try:
                self.client.end(replaced.token)
            except GatewayError as e:
                log.warning("closing the replaced stream %s failed (ignored): %s", replaced.token, e)
            self._run_observers(False, request_id)
        self._run_observers(True, request_id)
        return info

    def on_disconnect(self, token: str, reason: str = "client_closed") -> bool:
        """The stream ``token`` ended. Unknown or replaced tokens are ignored
        (returns False); otherwise the entry goes and the disconnect
        observers run (returns True)."""
        rid = self._remove_if_current(token)
        if rid is None:
            return False
        log.info("request_id %s disconnected (%s)", rid, reason)
        self._run_observers(False, rid)
        return True

    def _remove_if_current(self, token: str) -> Optional[str]:
        with self._lock:
            rid = self._by_token.pop(token, None)
            if rid is None:
                return None
            current = self._by_request.get(rid)
            if current is not None and current.token == token:
                del self._by_request[rid]
                return rid
            return None

    # -- roster --------------------------------------------------------

    def on_roster(self, instance: str, tokens: Iterable[str], interval_seconds: float) -> List[str]:
        """A roster from gateway ``instance``: every token of that instance
        it does not list, registered before the previous roster of that
        instance arrived, is removed as if its disconnect had arrived with
        reason ``instance_lost``; a roster never adds tokens. Arms the
        silence watch: no roster from ``instance`` for 3 intervals removes all
        its tokens. Returns the removed ``request_id``s."""
        listed = set(tokens)
        now = self._clock()
        with self._lock:
            watch = self._rosters.get(instance)
            previous = watch.received if watch is not None else 0
            lost_tokens = [
                info.token
                for info in self._by_request.values()
                if info.instance == instance and info.token not in listed and info.roster_epoch < previous
            ]
            if watch is not None and watch.timer is not None:
                watch.timer.cancel()
            watch = _RosterWatch(last_seen=now, interval_seconds=interval_seconds, received=previous + 1)
            self._rosters[instance] = watch
            self._arm(instance, watch, SILENT_INTERVALS * interval_seconds)
        return self._remove_lost(lost_tokens, instance)

    def _arm(self, instance: str, watch: _RosterWatch, delay: float) -> None:
        # Called with self._lock held.
        timer = threading.Timer(delay, self._timer_fired, args=(instance,))
        timer.daemon = True
        timer.name = f"sse-roster-watch-{instance}"
        watch.timer = timer
        timer.start()

    def _timer_fired(self, instance: str) -> None:
        with self._lock:
            watch = self._rosters.get(instance)
            if watch is not None and watch.timer is threading.current_thread():
                watch.timer = None  # so the check re-arms it if it fired early
        self.expire_silent_instances()

    def expire_silent_instances(self) -> List[str]:
        """Removes (reason ``instance_lost``) every token of each instance
        whose last roster is at least 3 of its intervals old; returns the
        removed ``request_id``s. Runs on its own from a timer after each
        roster; public so an application (or a test with its own clock) can
        run the check at any time."""
        now = self._clock()
        lost: Dict[str, List[str]] = {}
        with self._lock:
            for instance, watch in list(self._rosters.items()):
                deadline = watch.last_seen + SILENT_INTERVALS * watch.interval_seconds
                if now >= deadline:
                    del self._rosters[instance]
                    lost[instance] = [i.token for i in self._by_request.values() if i.instance == instance]
                elif watch.timer is None or not watch.timer.is_alive():
                    self._arm(instance, watch, deadline - now)
        removed: List[str] = []
        for instance, tokens in lost.items():
            log.warning("gateway instance %s sent no roster for %d intervals: presumed dead", instance, SILENT_INTERVALS)
            removed.extend(self._remove_lost(tokens, instance))
        return removed

    def _remove_lost(self, tokens: List[str], instance: str) -> List[str]:
        removed = []
        for token in tokens:
            rid = self._remove_if_current(token)
            if rid is not None:
                log.info("request_id %s (token %s) lost with gateway instance %s", rid, token, instance)
                self._run_observers(False, rid)
                removed.append(rid)
        return removed

    def shutdown(self) -> None:
        """Stops the roster silence timers (the table stays as it is)."""
        with self._lock:
            for watch in self._rosters.values():
                if watch.timer is not None:
                    watch.timer.cancel()
            self._rosters.clear()

    # -- queries -------------------------------------------------------

    def has_connection(self, request_id: str) -> bool:
        """Whether ``request_id`` has a live stream."""
        with self._lock:
            return request_id in self._by_request

    def connection_info(self, request_id: str) -> Optional[ConnectionInfo]:
        """The live connection of ``request_id``, or None."""
        with self._lock:
            return self._by_request.get(request_id)

    def request_id_of(self, token: str) -> Optional[str]:
        """The ``request_id`` whose live stream is ``token``, or None."""
        with self._lock:
            rid = self._by_token.get(token)
            info = self._by_request.get(rid) if rid is not None else None
            return rid if info is not None and info.token == token else None

    def connections(self) -> List[ConnectionInfo]:
        """A snapshot of every live connection."""
        with self._lock:
            return list(self._by_request.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_request)

    def bind_identity(self, request_id: str, identity: Identity) -> bool:
        """Binds (or rebinds) a subject to a live connection; False when
        ``request_id`` is not connected."""
        with self._lock:
            info = self._by_request.get(request_id)
            if info is not None:
                self._by_request[request_id] = replace(info, subject=identity.subject, role=identity.role)
        if info is None:
            log.warning("identity binding for an unknown connection %s", request_id)
            return False
        return True

    @staticmethod
    def bindings(info: ConnectionInfo) -> List[str]:
        """Routing keys a connection is reachable by (for the connect answer):
        ``broadcast``, ``connection.<request_id>``, ``subject.<sub>``,
        ``role.<role>``."""
        keys = ["broadcast", f"connection.{info.request_id}"]
        if info.subject is not None:
            keys.append(f"subject.{info.subject}")
        if info.role is not None:
            keys.append(f"role.{info.role}")
        return keys

    # -- sending -------------------------------------------------------

    def send_to(self, request_id: str, name: Optional[str], data: Any) -> bool:
        """Sends to one ``request_id``. False when it is not connected (no
        gateway call), when the gateway no longer knows the stream (the
        connection is then ended like a disconnect), or on any send error."""
        with self._lock:
            info = self._by_request.get(request_id)
        if info is None:
            log.warning("no connection for targeted send of %s to %s", name, request_id)
            return False
        return self._send_token(info.token, name, data)

    def _send_token(self, token: str, name: Optional[str], data: Any) -> bool:
        try:
            self.client.send(token, name, data)
            return True
        except GatewayError as e:
            if e.status == 404:
                log.info("gateway no longer knows stream %s; ending its connection", token)
                self.on_disconnect(token, NOT_FOUND)
            else:
                log.warning("send of %s to %s failed: %s", name, token, e)
            return False

    def broadcast(self, name: Optional[str], data: Any, subject: Optional[str] = None) -> bool:
        """Sends to every connection (``subject=None``), or to the connections
        bound to ``subject`` plus every :data:`LOCAL_USER` connection
        (connections with no subject are left out). False when nothing
        matched or nothing was delivered."""
        with self._lock:
            infos = list(self._by_request.values())
        if subject is None:
            targets = infos
        else:
            targets = [i for i in infos if i.subject is not None and i.subject in (subject, LOCAL_USER)]
        # With nobody connected, a publishing gateway still gets the event: one
        # keeping history records it, so a client that was away (a network
        # blip, a rolling restart) gets it replayed instead of missing it.
        nobody = not targets
        if self._publish:
            if subject is None:
                keys = ["broadcast"]
            else:
                # Only keys some live connection is bound to (with nobody, both).
                keys = []
                if nobody or any(i.subject == subject for i in infos):
                    keys.append(f"subject.{subject}")
                if subject != LOCAL_USER and (nobody or any(i.subject == LOCAL_USER for i in infos)):
                    keys.append(f"subject.{LOCAL_USER}")
            delivered = self._publish_keys(keys, name, data)
            if delivered is not None:
                return delivered
        if nobody:
            return False
        return self._fan_out([i.token for i in targets], name, data)

    def _publish_keys(self, keys: List[str], name: Optional[str], data: Any) -> Optional[bool]:
        matched = 0
        for key in keys:
            try:
                matched += self.client.publish(key, name, data)
            except GatewayError as e:
                if e.status in (404, 405):
                    log.warning("the gateway does not publish by key (%s): per-token sends from now on", e)
                    self._publish = False
                    return None
                if e.status in (401, 403):
                    log.warning("publish refused (%s): per-token sends for this call", e)
                    return None
                log.warning("publish of %s to %s failed: %s", name, key, e)
        return matched > 0

    def _fan_out(self, tokens: List[str], name: Optional[str], data: Any) -> bool:
        if len(tokens) == 1:
            return self._send_token(tokens[0], name, data)
        workers = min(self._fanout_limit, len(tokens))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sse-fanout") as pool:
            results = list(pool.map(lambda t: self._send_token(t, name, data), tokens))
        return any(results)
