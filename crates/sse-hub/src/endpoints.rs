//! Every HTTP route the hub serves, with a `curl` example: the one list
//! `sse-hub --help` prints (README's hub section shows the same examples;
//! a test keeps the two in step). `/internal/*` routes answer loopback
//! clients, or `Authorization: Bearer $INTERNAL_API_SECRET` when it is set.

/// One route.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    /// `GET`, `POST`, `DELETE`.
    pub method: &'static str,
    /// The path (`{id}` for a parameter).
    pub path: &'static str,
    /// What it does and answers.
    pub what: &'static str,
    /// A `curl` command against `localhost:8080`.
    pub example: &'static str,
}

/// The routes, in the order `--help` lists them.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "GET",
        path: "/",
        what: "the live dashboard (any number of tabs share one stream through its worker)",
        example: "curl localhost:8080/",
    },
    Endpoint {
        method: "GET",
        path: "/dashboard-worker.js",
        what: "the dashboard's stream worker: a SharedWorker holding the one stream of all the dashboard's \
               tabs in a browser",
        example: "curl localhost:8080/dashboard-worker.js",
    },
    Endpoint {
        method: "GET",
        path: "/api/sse/stream",
        what: "an event stream (?request_id=ID: the id the push and subscribe routes name; &snapshot=leases: a \
               leases_snapshot of every lease before ready); events are {\"type\",\"payload\"} envelopes",
        example: "curl -N 'localhost:8080/api/sse/stream?request_id=r1&snapshot=leases'",
    },
    Endpoint {
        method: "GET",
        path: "/api/dhcp/leases",
        what: "the current leases (also /api/dhcp/pools and /api/dhcp/pools/usage)",
        example: "curl localhost:8080/api/dhcp/leases",
    },
    Endpoint {
        method: "POST",
        path: "/api/dhcp/leases/snapshot",
        what: "send a leases_snapshot (every lease, with the seq of the last lease event) to one stream, as a \
               page does after it missed events -> 202 {\"request_id\",\"delivered\"}; 404 when no such stream \
               is open",
        example: "curl -X POST localhost:8080/api/dhcp/leases/snapshot -H 'Content-Type: application/json' \
                  -d '{\"request_id\":\"r1\"}'",
    },
    Endpoint {
        method: "POST",
        path: "/internal/notify-lease-change",
        what: "re-read the lease file now (it is also watched)",
        example: "curl -X POST localhost:8080/internal/notify-lease-change",
    },
    Endpoint {
        method: "POST",
        path: "/api/tasks",
        what: "start a task -> 201 {\"task_id\",\"status\":\"pending\"}; task_type demo (params steps 1-10000, \
               delay_ms 0-60000 per step), failing (delay_ms, error_message) or long (delay_ms per tick, runs \
               until cancelled); progress arrives as task_event on the streams",
        example: "curl -X POST localhost:8080/api/tasks -H 'Content-Type: application/json' \
                  -d '{\"task_type\":\"demo\",\"params\":{\"steps\":5,\"delay_ms\":400}}'",
    },
    Endpoint {
        method: "GET",
        path: "/api/tasks/{id}/status",
        what: "a task's state, result or error",
        example: "curl localhost:8080/api/tasks/$TASK_ID/status",
    },
    Endpoint {
        method: "POST",
        path: "/api/tasks/{id}/cancel",
        what: "cancel a pending or running task (the streams get task_cancelled); 404 when unknown or ended",
        example: "curl -X POST localhost:8080/api/tasks/$TASK_ID/cancel",
    },
    Endpoint {
        method: "DELETE",
        path: "/api/tasks/{id}",
        what: "forget an ended task; 404 when unknown or still live",
        example: "curl -X DELETE localhost:8080/api/tasks/$TASK_ID",
    },
    Endpoint {
        method: "POST",
        path: "/api/device-logs/subscribe",
        what: "send a device's log lines to one stream (also /api/device-logs/unsubscribe, same body)",
        example: "curl -X POST localhost:8080/api/device-logs/subscribe -H 'Content-Type: application/json' \
                  -d '{\"request_id\":\"r1\",\"device_entity_id\":\"sensor.kitchen\"}'",
    },
    Endpoint {
        method: "POST",
        path: "/internal/device-logs/ingest",
        what: "device log lines as NDJSON, one JSON object per line with a string entity_id (the device) and \
               usually a message (ANSI escapes are stripped, @timestamp is set, relative_time dropped); the \
               same format as an MQTT message -> {\"accepted\",\"rejected\",\"delivered\"}",
        example: "printf '%s\\n' '{\"entity_id\":\"sensor.kitchen\",\"message\":\"boot ok\",\"level\":\"I\"}' \
                  | curl -X POST localhost:8080/internal/device-logs/ingest --data-binary @-",
    },
    Endpoint {
        method: "POST",
        path: "/internal/deployments/version",
        what: "tell pages a new version is out: {\"version\",\"changelog\"?,\"request_id\"?}; with request_id \
               that stream only (404 when it is not open), without it every stream -> 202 \
               {\"request_id\",\"delivered\",\"status\"}",
        example: "curl -X POST localhost:8080/internal/deployments/version -H 'Content-Type: application/json' \
                  -d '{\"version\":\"1.4.0\",\"changelog\":\"faster leases\"}'",
    },
    Endpoint {
        method: "GET",
        path: "/version.json",
        what: "the FRONTEND_VERSION_FILE document (only when it is set); a change to the file is pushed to \
               every page",
        example: "curl localhost:8080/version.json",
    },
    Endpoint {
        method: "POST",
        path: "/internal/rotation-nudge",
        what: "send rotation-updated to every stream (what `sse-hub rotation-nudge` does)",
        example: "curl -X POST localhost:8080/internal/rotation-nudge",
    },
    Endpoint {
        method: "GET",
        path: "/internal/metrics",
        what: "the hub's and the toolkit's Prometheus metrics",
        example: "curl localhost:8080/internal/metrics",
    },
];

/// The `--help` section listing [`ENDPOINTS`].
pub fn help_text() -> String {
    let mut out = String::from(
        "Endpoints (/internal/* answer loopback clients, or `Authorization: Bearer $INTERNAL_API_SECRET` when \
         it is set):\n",
    );
    for e in ENDPOINTS {
        out.push_str(&format!("\n  {} {}\n      {}\n      $ {}\n", e.method, e.path, e.what, e.example));
    }
    out
}
