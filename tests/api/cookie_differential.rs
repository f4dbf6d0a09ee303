//! The gateway's reading of `Cookie` against gunicorn + Werkzeug themselves (issue 11 part 1).
//!
//! Several thousand seeded sets of raw `Cookie` header values (quotes, escaped quotes,
//! backslashes, octal escapes, `;` inside quotes, whitespace around `=` and `;`, tabs, repeated
//! headers, non-ASCII and control bytes, empty names, bare `=`, `$Version`, the session cookie
//! twice, commas, very long values) go through both:
//!
//! * the gateway's own code: `cookie::session`;
//! * `tests/werkzeug_cookie_oracle.py`: the same header lines parsed by gunicorn's request
//!   parser and environ builder, then `werkzeug.wrappers.Request(environ).cookies` (what Flask's
//!   `request.cookies` is); and the gateway's forwarded header read the same way.
//!
//! For every case the gateway must refuse it (400), or: its token is Werkzeug's
//! `cookies.get("console_session")` for the client's headers, AND Werkzeug reading the header
//! the gateway forwards finds exactly that one value (or none). Pure library + a python
//! subprocess: no gateway process, no database.

use rbac_gateway::policy::cookie;

use crate::helpers::{python_oracle, Rng};

const NAME: &str = "console_session";

const NAMES: &[&[u8]] = &[
    b"console_session",
    b"console_session",
    b"console_session",
    b"theme",
    b"a",
    b"$Version",
    b"$Path",
    b"",
    b" console_session",
    b"console_session ",
    b"\tconsole_session",
    b"Console_Session",
    b"console_sessionx",
    b"xconsole_session",
    b"console-session",
    b"console_session\xa0",
    b"\x85console_session",
    b"\x1fconsole_session",
    b"con\"sole_session",
    b"console_session,",
    b"(x)",
    b"a b",
    b"\xc3\xa9",
    b"\"q\"",
];

const VALUES: &[&[u8]] = &[
    b"tokA",
    b"tokB",
    b"tok-C_1.2~",
    b"\"tokA\"",
    b"\"tokB\"",
    b"\"\"",
    b"",
    b"\"a;b\"",
    b"\"a; console_session=tokB\"",
    b"\"a\\\"b\"",
    b"\"a\\\\b\"",
    b"\"a\\073b\"",
    b"\"\\164okA\"",
    b"a\\b",
    b"\"unbalanced",
    b"unbalanced\"",
    b"a\"b\"",
    b"a,b",
    b"a, console_session=tokB",
    b"a b",
    b"a\tb",
    b"=",
    b"a=b",
    b"==",
    b"\xe9",
    b"\xc3\xa9",
    b"\xff\xfe",
    b"\x01",
    b"\x7f",
    b"\x00",
    b"\" tokA \"",
    b" tokA",
    b"tokA ",
    b"$1",
];

const EQUALS: &[&[u8]] = &[
    b"=", b"=", b"=", b"=", b" =", b"= ", b" = ", b"\t=", b"=\t", b"==", b"",
];

const SEPARATORS: &[&[u8]] = &[
    b"; ", b"; ", b"; ", b";", b";", b"  ;", b";  ", b" ; ", b",", b", ", b"\t;", b";\t", b";;",
    b"; ;", b"", b" ",
];

/// Bytes sprinkled into some headers.
const NOISE: &[&[u8]] = &[
    b"\"", b"\\", b";", b",", b" ", b"\t", b"=", b"$", b"\x80", b"\xff", b"\x0b", b"\x0c", b"\x1c",
    b"\xa0", b"\x85", b"\x00",
];

/// Names and values a browser sends: most generated headers start from these, so that many
/// cases land in the accepted subset, and a single mutation then probes its edge.
const CLEAN_NAMES: &[&[u8]] = &[b"console_session", b"theme", b"a", b"_ga", b"csrf-token"];
const CLEAN_VALUES: &[&[u8]] = &[
    b"tokA",
    b"tokB",
    b"tok-C_1.2~",
    b"\"tokA\"",
    b"\"tokB\"",
    b"\"\"",
    b"",
    b"a=b",
    b"GA1.2.3:4/5+6?7!8#9",
];

fn pair(rng: &mut Rng, clean: bool) -> Vec<u8> {
    if clean {
        let mut p = rng.pick(CLEAN_NAMES).to_vec();
        p.push(b'=');
        p.extend_from_slice(rng.bytes(CLEAN_VALUES));
        return p;
    }
    let mut p = rng.pick(NAMES).to_vec();
    if rng.pct(5) {
        return p; // no `=` at all
    }
    p.extend_from_slice(rng.bytes(EQUALS));
    if rng.pct(2) {
        p.extend(std::iter::repeat_n(b'v', 2000 + rng.below(7000)));
    } else {
        p.extend_from_slice(rng.bytes(VALUES));
    }
    p
}

fn header(rng: &mut Rng) -> Vec<u8> {
    let clean = rng.pct(50);
    let mut h = Vec::new();
    if !clean && rng.pct(5) {
        h.extend_from_slice(rng.bytes(SEPARATORS));
    }
    let n = 1 + rng.below(4);
    for i in 0..n {
        if i > 0 {
            if clean || rng.pct(60) {
                let sep: &[u8] = if rng.pct(80) { b"; " } else { b";" };
                h.extend_from_slice(sep);
            } else {
                h.extend_from_slice(rng.bytes(SEPARATORS));
            }
        }
        let clean_pair = clean && !rng.pct(10);
        h.extend(pair(rng, clean_pair));
    }
    if !clean && rng.pct(5) {
        h.extend_from_slice(rng.bytes(SEPARATORS));
    }
    if rng.pct(if clean { 25 } else { 10 }) {
        let at = rng.below(h.len() + 1);
        let noise = rng.pick(NOISE);
        h.splice(at..at, noise.iter().copied());
    }
    h
}

fn case(rng: &mut Rng) -> Vec<Vec<u8>> {
    let n = match rng.below(100) {
        0..=4 => 0,
        5..=79 => 1,
        80..=94 => 2,
        _ => 3,
    };
    (0..n).map(|_| header(rng)).collect()
}

/// Hand-written cases from the issue, always included.
fn fixed() -> Vec<Vec<Vec<u8>>> {
    let raw: &[&[&[u8]]] = &[
        &[b"console_session=tokA"],
        &[b"console_session=\"tokA;x\"; console_session=tokB"],
        &[b"console_session =tokA; console_session=tokB"],
        &[b"x=\xe9; console_session=tokA", b"console_session=tokB"],
        &[b"a=1", b"console_session=tokA"],
        &[b"console_session=tokA", b"console_session=tokB"],
        &[b"console_session=\"tokA"],
        &[b"$Version=1; console_session=tokA"],
        &[b"theme=dark; console_session=tokA"],
        &[b"theme=dark"],
        &[b"theme=\"unbalanced; x=\xff", b"y=1"],
        &[],
    ];
    raw.iter()
        .map(|hs| hs.iter().map(|h| h.to_vec()).collect())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Debug)]
struct Read {
    status: String,
    values: Vec<String>,
}

fn read(v: &serde_json::Value) -> Read {
    Read {
        status: v["status"].as_str().unwrap().to_string(),
        values: v["values"]
            .as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default(),
    }
}

#[test]
fn cookie_reading_agrees_with_gunicorn_and_werkzeug() {
    let mut rng = Rng(0x000c_00c1_e511);
    let mut cases = fixed();
    while cases.len() < 10_000 {
        cases.push(case(&mut rng));
    }
    let results: Vec<_> = cases
        .iter()
        .map(|hs| {
            let refs: Vec<&[u8]> = hs.iter().map(Vec::as_slice).collect();
            cookie::session(&refs, NAME).map(|s| {
                (
                    s.token.map(str::to_string),
                    s.forward.map(|f| f.into_owned()),
                )
            })
        })
        .collect();
    let input: String = cases
        .iter()
        .zip(&results)
        .map(|(hs, r)| {
            let forward = match r {
                Ok((_, Some(f))) => serde_json::Value::String(hex(f)),
                _ => serde_json::Value::Null,
            };
            let headers: Vec<String> = hs.iter().map(|h| hex(h)).collect();
            serde_json::json!({"name": NAME, "headers": headers, "forward": forward}).to_string()
                + "\n"
        })
        .collect();
    let answers = python_oracle("werkzeug_cookie_oracle.py", &[], input, cases.len());

    let (mut refused, mut with_session, mut without, mut joined, mut console_has_session) =
        (0, 0, 0, 0, 0);
    let mut console_refuses_size = 0;
    let mut refused_reasons = std::collections::BTreeMap::<&str, usize>::new();
    let mut mismatches = Vec::new();
    for ((hs, got), answer) in cases.iter().zip(&results).zip(&answers) {
        let client = read(&answer["client"]);
        if client.status == "ok" && !client.values.is_empty() {
            console_has_session += 1;
        }
        let describe = || {
            hs.iter()
                .map(|h| {
                    let text = format!("{:?}", String::from_utf8_lossy(h));
                    match text.char_indices().nth(160) {
                        Some((i, _)) => format!("{}...({} bytes)", &text[..i], h.len()),
                        None => text,
                    }
                })
                .collect::<Vec<_>>()
                .join(" + ")
        };
        let (token, forward) = match got {
            Err(reason) => {
                refused += 1;
                *refused_reasons.entry(reason.as_str()).or_default() += 1;
                continue;
            }
            Ok(t) => t,
        };
        match token {
            Some(_) => with_session += 1,
            None => without += 1,
        }
        if hs.len() > 1 {
            joined += 1;
        }
        // What Console reads from the client's own headers. gunicorn's own header size limit
        // (`limit_request_field_size`, 8190 bytes) answers 400 before Console runs: nobody acts.
        let too_long = |a: &serde_json::Value| {
            a["status"] == "gunicorn_refused"
                && a["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("LimitRequestHeaders"))
        };
        if too_long(&answer["client"]) {
            console_refuses_size += 1;
            continue;
        }
        if client.status != "ok" {
            mismatches.push(format!(
                "[{}]: gateway accepts, Console fails ({}: {})",
                describe(),
                client.status,
                answer["client"]["error"]
            ));
            continue;
        }
        if client.values.first() != token.as_ref() {
            mismatches.push(format!(
                "[{}]: gateway token {token:?} / werkzeug {:?}",
                describe(),
                client.values.first()
            ));
        }
        // What Console reads from the header the gateway forwards.
        match (forward, answer["forward"].is_null()) {
            (None, true) => {
                if token.is_some() {
                    mismatches.push(format!("[{}]: token without a header", describe()));
                }
            }
            (Some(f), false) => {
                let fwd = read(&answer["forward"]);
                let want: Vec<String> = token.iter().cloned().collect();
                if !too_long(&answer["forward"]) && (fwd.status != "ok" || fwd.values != want) {
                    mismatches.push(format!(
                        "[{}]: forwarded {:?} reads as {fwd:?}, gateway token {token:?}",
                        describe(),
                        String::from_utf8_lossy(f)
                    ));
                }
            }
            _ => unreachable!("the oracle got the forward iff there was one"),
        }
    }
    eprintln!(
        "cookie differential: {} cases ({console_has_session} where Console finds a session), \
         {refused} refused by the gateway {refused_reasons:?}, {with_session} accepted with a \
         session, {without} accepted without one ({joined} repeated headers joined, \
         {console_refuses_size} over gunicorn's header size limit), {} mismatches",
        cases.len(),
        mismatches.len()
    );
    assert!(
        mismatches.is_empty(),
        "{} of {} cases disagree with gunicorn + Werkzeug:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The generator must exercise every branch, not only the refusals.
    assert!(with_session >= 500, "only {with_session} accepted sessions");
    assert!(without >= 500, "only {without} accepted without a session");
    assert!(joined >= 100, "only {joined} repeated headers joined");
    assert!(refused >= 1000, "only {refused} refused");
}
