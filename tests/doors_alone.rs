//! A door started alone (issue 45): the data plane's workers serve whatever doors they are
//! handed (`dataplane::workers::start`), so forward-auth runs without the proxy beside it and a
//! door can be tested by itself. No database: the mapping's routes resolve no session.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rbac_gateway::dataplane::workers::{self, Door, Http1Settings, StartError};
use rbac_gateway::doors::forward_auth::ForwardAuthDoor;
use rbac_gateway::gateway::state::Gateway;
use rbac_gateway::policy::mapping::Mapping;

const ROUTES: &str = r#"
[[route]]
methods = ["GET"]
path = "/status"
access = "public"

[[route]]
methods = ["GET"]
path = "/console/flags"
roles = ["console-user"]
"#;

fn http() -> Http1Settings {
    Http1Settings {
        header_read_timeout: Duration::from_secs(5),
        max_header_bytes: 32 * 1024,
        max_headers: 100,
        shutdown_grace: Duration::from_secs(1),
    }
}

/// The status line and the `X-Rbac-Decision` of forward-auth's answer to `uri`.
fn ask(authz: SocketAddr, uri: &str) -> (String, String) {
    let mut s = TcpStream::connect(authz).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /authz HTTP/1.1\r\nHost: gw\r\nX-Forwarded-Method: GET\r\nX-Forwarded-Uri: {uri}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer.lines().next().unwrap_or_default().to_string();
    let decision = answer
        .lines()
        .find_map(|l| l.strip_prefix("x-rbac-decision: "))
        .unwrap_or_default()
        .to_string();
    (status, decision)
}

/// Forward-auth over [`ROUTES`], and the runtime its gateway was made on (kept while it serves).
fn forward_auth_door() -> (tokio::runtime::Runtime, Arc<dyn Door>) {
    let mapping = Mapping::from_str("routes.toml", Path::new("routes.toml"), ROUTES).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Nothing listens at the upstream: forward-auth never forwards.
    let upstream: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let gw = rt.block_on(async { Arc::new(Gateway::without_database(mapping, upstream)) });
    (rt, Arc::new(ForwardAuthDoor::new(gw, http())))
}

#[test]
fn forward_auth_served_alone_answers_and_stops() {
    let (_rt, door) = forward_auth_door();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let started = workers::start(
        2,
        vec![("127.0.0.1:0".parse().unwrap(), door)],
        stopped,
        None,
    )
    .expect("forward-auth alone listens");
    assert_eq!(started.bound.len(), 1);
    let authz = started.bound[0];

    assert_eq!(
        ask(authz, "/status"),
        ("HTTP/1.1 200 OK".to_string(), "public".to_string())
    );
    // No session: the login redirect's status, decided without the database.
    assert_eq!(
        ask(authz, "/console/flags"),
        (
            "HTTP/1.1 401 Unauthorized".to_string(),
            "redirected".to_string()
        )
    );

    stop.send(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    for w in started.handles {
        while !w.is_finished() {
            assert!(Instant::now() < deadline, "a worker did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
        w.join().expect("a worker ended without panicking");
    }
}

#[test]
fn a_door_whose_address_is_taken_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mapping = Mapping::from_str("routes.toml", Path::new("routes.toml"), ROUTES).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let gw = rt.block_on(async { Arc::new(Gateway::without_database(mapping, addr)) });
    let door: Arc<dyn Door> = Arc::new(ForwardAuthDoor::new(gw, http()));
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    match workers::start(1, vec![(addr, door)], stopped, None) {
        Err(e @ StartError::Listen { .. }) => {
            let text = e.to_string();
            assert!(
                text.starts_with("cannot listen on --authz-listen: "),
                "{text}"
            );
        }
        Err(e) => panic!("not the listen error: {e}"),
        Ok(_) => panic!("listened on a port another socket holds"),
    }
}

/// The task handed to the first worker (`serve`'s audit writer) runs on that worker's thread,
/// learns that its doors have finished only once they have, and the worker thread waits for it
/// to wind down before it ends.
#[test]
fn the_task_beside_the_doors_runs_on_the_first_worker_until_they_finish() {
    use std::sync::Mutex;
    let (_rt, door) = forward_auth_door();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // What the task saw: its thread's name, then "doors done", then "wound down".
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    // The task winds down only when the test lets it, after seeing its worker still running.
    let (wind_down, may_wind_down) = tokio::sync::oneshot::channel::<()>();
    let beside: workers::Beside = Box::new({
        let seen = seen.clone();
        move |doors_done| {
            Box::pin(async move {
                let name = std::thread::current().name().unwrap_or("-").to_string();
                seen.lock().unwrap().push(name);
                doors_done.await;
                seen.lock().unwrap().push("doors done".into());
                may_wind_down.await.expect("the test lets it wind down");
                seen.lock().unwrap().push("wound down".into());
            })
        }
    });
    let started = workers::start(
        2,
        vec![("127.0.0.1:0".parse().unwrap(), door)],
        stopped,
        Some(beside),
    )
    .expect("listens");
    let authz = started.bound[0];
    // Serving: the task has started and has not been told the doors are done.
    assert_eq!(ask(authz, "/status").0, "HTTP/1.1 200 OK");
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the task never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(*seen.lock().unwrap(), ["rbac-gateway-w0"]);
    stop.send(true).unwrap();
    while seen.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "never told the doors were done");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The doors are done and the task is winding down: its worker waits for it.
    assert!(
        !started.handles[0].is_finished(),
        "the first worker ended first"
    );
    wind_down.send(()).unwrap();
    for w in started.handles {
        w.join().expect("a worker ended without panicking");
    }
    // Every worker has ended, and the first only after the task had wound down.
    assert_eq!(
        *seen.lock().unwrap(),
        ["rbac-gateway-w0", "doors done", "wound down"]
    );
}
