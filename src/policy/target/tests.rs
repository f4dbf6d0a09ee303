//! The request target's and headers' checks, case by case.

use super::*;

#[test]
fn every_refusal_label_is_listed() {
    // Exhaustive: a new variant does not compile here until it is added to `all` below.
    fn listed(r: &Refusal) {
        match r {
            Refusal::NotOriginForm
            | Refusal::Fragment
            | Refusal::RawByte(_)
            | Refusal::RawBackslash
            | Refusal::MalformedEscape
            | Refusal::EncodedSlash
            | Refusal::EncodedBackslash
            | Refusal::ControlChar
            | Refusal::AmbiguousChar
            | Refusal::InvalidUtf8
            | Refusal::UnicodeDigit
            | Refusal::DotSegment
            | Refusal::EmptySegment
            | Refusal::MethodNotUppercase
            | Refusal::MethodNotLetters
            | Refusal::RewriteHeader(_)
            | Refusal::UnderscoreHeader(_)
            | Refusal::ObsFold
            | Refusal::MalformedRequestLine
            | Refusal::AmbiguousFraming
            | Refusal::MissingHost
            | Refusal::InvalidHost
            | Refusal::Upgrade
            | Refusal::ConnectionNamesHeader(_)
            | Refusal::Unparsed
            | Refusal::TargetHeaders(_) => {}
            // Listed in CookieRefusal::ALL.
            Refusal::Cookie(_) => {}
        }
    }
    let all = [
        Refusal::NotOriginForm,
        Refusal::Fragment,
        Refusal::RawByte(0),
        Refusal::RawBackslash,
        Refusal::MalformedEscape,
        Refusal::EncodedSlash,
        Refusal::EncodedBackslash,
        Refusal::ControlChar,
        Refusal::AmbiguousChar,
        Refusal::InvalidUtf8,
        Refusal::UnicodeDigit,
        Refusal::DotSegment,
        Refusal::EmptySegment,
        Refusal::MethodNotUppercase,
        Refusal::MethodNotLetters,
        Refusal::RewriteHeader(String::new()),
        Refusal::UnderscoreHeader(String::new()),
        Refusal::ObsFold,
        Refusal::MalformedRequestLine,
        Refusal::AmbiguousFraming,
        Refusal::MissingHost,
        Refusal::InvalidHost,
        Refusal::Upgrade,
        Refusal::ConnectionNamesHeader(String::new()),
        Refusal::Unparsed,
        Refusal::TargetHeaders(String::new()),
    ];
    for r in &all {
        listed(r);
        assert!(Refusal::REASONS.contains(&r.as_str()), "{}", r.as_str());
    }
    assert_eq!(all.len(), Refusal::REASONS.len());
}

fn refusal(t: &str) -> Refusal {
    parse_target(t.as_bytes()).unwrap_err()
}

#[test]
fn decodes_once_and_keeps_the_original() {
    let t = parse_target(b"/console/%61dmins/online?next=%2F").unwrap();
    assert_eq!(t.path(), "/console/admins/online");
    assert_eq!(t.original(), "/console/%61dmins/online?next=%2F");
    let t = parse_target(b"/a/%252F").unwrap();
    assert_eq!(t.path(), "/a/%2F");
    let t = parse_target(b"/caf%C3%A9/").unwrap();
    assert_eq!(t.path(), "/caf\u{e9}/");
    let t = parse_target(b"/a%41b?x=%2F?y").unwrap();
    assert_eq!((t.raw_path(), t.query()), ("/a%41b", Some("x=%2F?y")));
    let t = parse_target(b"/ops?").unwrap();
    assert_eq!((t.raw_path(), t.query()), ("/ops", Some("")));
    assert_eq!(parse_target(b"/ops").unwrap().query(), None);
}

#[test]
fn refuses_every_uncertain_form() {
    let cases: &[(&str, Refusal)] = &[
        ("http://console/ops", Refusal::NotOriginForm),
        ("console:443", Refusal::NotOriginForm),
        ("*", Refusal::NotOriginForm),
        ("/a#b", Refusal::Fragment),
        ("/a%2Fb", Refusal::EncodedSlash),
        ("/a%2fb", Refusal::EncodedSlash),
        ("/a%5Cb", Refusal::EncodedBackslash),
        ("/a%5cb", Refusal::EncodedBackslash),
        ("/a\\b", Refusal::RawBackslash),
        ("/a/./b", Refusal::DotSegment),
        ("/a/../b", Refusal::DotSegment),
        ("/a/%2e%2E/b", Refusal::DotSegment),
        ("/a/%2e", Refusal::DotSegment),
        ("/a/.%2e", Refusal::DotSegment),
        ("//a", Refusal::EmptySegment),
        ("/a//b", Refusal::EmptySegment),
        ("/a//", Refusal::EmptySegment),
        ("/a%zz", Refusal::MalformedEscape),
        ("/a%4", Refusal::MalformedEscape),
        ("/a%", Refusal::MalformedEscape),
        ("/a%00", Refusal::ControlChar),
        ("/a%0A", Refusal::ControlChar),
        ("/a%7F", Refusal::ControlChar),
        ("/a%C2%85", Refusal::ControlChar),
        ("/a%FF", Refusal::InvalidUtf8),
        ("/a%C3", Refusal::InvalidUtf8),
        ("/a%20b", Refusal::AmbiguousChar),
        ("/a/%D9%A3", Refusal::UnicodeDigit),
    ];
    for (t, want) in cases {
        assert_eq!(&refusal(t), want, "target {t:?}");
    }
    assert_eq!(
        parse_target(b"/a\xffb").unwrap_err(),
        Refusal::RawByte(0xff)
    );
    assert_eq!(parse_target(b"/a\tb").unwrap_err(), Refusal::RawByte(b'\t'));
}

#[test]
fn query_does_not_affect_the_path() {
    let t = parse_target(b"/ops?x=/../%2F&y=#").unwrap_err();
    assert_eq!(t, Refusal::Fragment);
    let t = parse_target(b"/ops?x=/../%2F").unwrap();
    assert_eq!(t.path(), "/ops");
}

#[test]
fn methods_and_headers() {
    assert!(check_method(b"GET").is_ok());
    assert_eq!(check_method(b"get"), Err(Refusal::MethodNotUppercase));
    assert_eq!(check_method(b"Get"), Err(Refusal::MethodNotUppercase));
    assert_eq!(check_method(b"m-search"), Err(Refusal::MethodNotUppercase));
    assert_eq!(check_method(b"M-SEARCH"), Err(Refusal::MethodNotLetters));
    assert_eq!(check_method(b"GET2"), Err(Refusal::MethodNotLetters));
    assert_eq!(check_method(b""), Err(Refusal::MethodNotLetters));
    assert!(check_header_name("X-Forwarded-For").is_ok());
    assert!(matches!(
        check_header_name("x-http-method-override"),
        Err(Refusal::RewriteHeader(_))
    ));
    assert!(matches!(
        check_header_name("X-Original-URL"),
        Err(Refusal::RewriteHeader(_))
    ));
    assert!(matches!(
        check_header_name("SCRIPT_NAME"),
        Err(Refusal::UnderscoreHeader(_))
    ));
}

#[test]
fn connection_lists_names_keep_alive_aside() {
    let named = |v: &[u8]| {
        let mut n = Vec::new();
        connection_tokens(v, &mut n);
        n.iter().map(|h| h.as_str().to_string()).collect::<Vec<_>>()
    };
    assert!(named(b"keep-alive").is_empty());
    assert!(named(b"Keep-Alive").is_empty());
    assert!(named(b" keep-alive , ").is_empty());
    assert_eq!(named(b"close"), ["close"]);
    assert_eq!(named(b"keep-alive, X-Private"), ["x-private"]);
    assert_eq!(named(b"keep-alive2"), ["keep-alive2"]);
}

#[test]
fn ambiguous_framing_is_refused() {
    let h = |pairs: &[(&str, &str)]| {
        let mut m = http::HeaderMap::new();
        m.insert(http::header::HOST, "c".parse().unwrap());
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    };
    assert!(check_headers(&h(&[("content-length", "5")]), true).is_ok());
    assert!(check_headers(&h(&[("transfer-encoding", "chunked")]), true).is_ok());
    for bad in [
        vec![("content-length", "5"), ("transfer-encoding", "chunked")],
        vec![("content-length", "5"), ("content-length", "5")],
        vec![("content-length", "+5")],
        vec![("transfer-encoding", "identity, chunked")],
        vec![("transfer-encoding", "Chunked")],
        vec![
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked"),
        ],
    ] {
        assert_eq!(
            check_headers(&h(&bad), true),
            Err(Refusal::AmbiguousFraming),
            "{bad:?}"
        );
    }
    assert_eq!(
        check_headers(&http::HeaderMap::new(), true),
        Err(Refusal::MissingHost)
    );
    assert!(check_headers(&http::HeaderMap::new(), false).is_ok());
    assert_eq!(
        check_headers(&h(&[("host", "d")]), false),
        Err(Refusal::MissingHost),
        "two hosts"
    );
    // Precedence: a name first, then Upgrade, then framing, then the host.
    let mut m = h(&[
        ("upgrade", "h2c"),
        ("content-length", "+1"),
        ("x-original-url", "/a"),
    ]);
    assert!(matches!(
        check_headers(&m, true),
        Err(Refusal::RewriteHeader(_))
    ));
    m.remove("x-original-url");
    assert_eq!(check_headers(&m, true), Err(Refusal::Upgrade));
    m.remove("upgrade");
    m.insert(http::header::HOST, "bad host".parse().unwrap());
    assert_eq!(check_headers(&m, true), Err(Refusal::AmbiguousFraming));
    m.remove("content-length");
    assert_eq!(check_headers(&m, true), Err(Refusal::InvalidHost));
}

#[test]
fn the_headers_the_gateway_reads_are_seen_in_the_same_pass() {
    let mut m = http::HeaderMap::new();
    for (k, v) in [
        ("host", "c"),
        ("cookie", "a=1"),
        ("user-agent", "first"),
        ("cookie", "b=2"),
        ("user-agent", "second"),
        ("cookie", "c=3"),
    ] {
        m.append(k, v.parse().unwrap());
    }
    let seen = check_headers(&m, true).unwrap();
    assert_eq!(seen.cookie, Some(&b"a=1"[..]));
    assert_eq!(seen.more_cookies, [&b"b=2"[..], b"c=3"]);
    assert_eq!(seen.user_agent.as_deref(), Some(&b"first,second"[..]));
    assert!(seen.connection_named.is_empty());
    m.append("connection", "x-a".parse().unwrap());
    assert_eq!(check_headers(&m, true).unwrap().connection_named, ["x-a"]);
    let empty = http::HeaderMap::new();
    assert_eq!(check_headers(&empty, false), Ok(Seen::default()));
}

#[test]
fn every_connection_header_names_its_hop_by_hop_headers() {
    let mut h = http::HeaderMap::new();
    h.insert(http::header::HOST, "c".parse().unwrap());
    for (n, v) in [
        ("connection", "keep-alive, X-Private"),
        ("x-private", "secret"),
        ("connection", " Upgrade ,, not a name"),
    ] {
        h.append(n, v.parse().unwrap());
    }
    let named: Vec<String> = check_headers(&h, true)
        .unwrap()
        .connection_named
        .iter()
        .map(|n| n.as_str().to_string())
        .collect();
    assert_eq!(named, ["x-private", "upgrade"]);
    let mut only_keep_alive = http::HeaderMap::new();
    only_keep_alive.insert(http::header::HOST, "c".parse().unwrap());
    only_keep_alive.insert(http::header::CONNECTION, "keep-alive".parse().unwrap());
    assert!(check_headers(&only_keep_alive, true)
        .unwrap()
        .connection_named
        .is_empty());
}

#[test]
fn a_connection_header_may_not_name_host_or_cookie() {
    let check = |connections: &[&str], http11: bool| {
        let mut m = http::HeaderMap::new();
        if http11 {
            m.insert(http::header::HOST, "c".parse().unwrap());
        }
        for c in connections {
            m.append(http::header::CONNECTION, c.parse().unwrap());
        }
        check_headers(&m, http11).map(|_| ())
    };
    for ok in [
        &["close"][..],
        &["keep-alive, X-A"],
        &["Upgrade-Insecure"],
        &["hostname, cookies"],
    ] {
        assert_eq!(check(ok, true), Ok(()), "{ok:?}");
    }
    for (bad, named) in [
        (&["keep-alive, Host"][..], "host"),
        (&["close", " COOKIE "], "cookie"),
        (&["x,cookie,y"], "cookie"),
    ] {
        for http11 in [true, false] {
            assert_eq!(
                check(bad, http11),
                Err(Refusal::ConnectionNamesHeader(named.into())),
                "{bad:?}"
            );
        }
    }
}

#[test]
fn hosts() {
    let host = |v: &str| {
        let mut m = http::HeaderMap::new();
        m.insert(http::header::HOST, v.parse().unwrap());
        check_headers(&m, true).map(|_| ())
    };
    for ok in [
        "console",
        "console.example:8443",
        "127.0.0.1:80",
        "[::1]:80",
    ] {
        assert_eq!(host(ok), Ok(()), "{ok}");
    }
    for bad in [
        "",
        "console/admin",
        "a@console",
        "console?x",
        "console#x",
        "con sole",
        "console\\x",
    ] {
        assert_eq!(host(bad), Err(Refusal::InvalidHost), "{bad:?}");
    }
}

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, failure_persistence: None, ..ProptestConfig::default() })]

    /// A target read as text answers as its bytes do: the same target, or the same refusal
    /// (targets made of path pieces, escapes, separators, control and non-ASCII characters;
    /// four in five begin with `/`, so that most get past the first check).
    #[test]
    fn text_answers_as_bytes(
        slash in proptest::bool::weighted(0.8),
        pieces in proptest::collection::vec(
            prop_oneof![
                Just("/".to_string()),
                Just("%2F".to_string()),
                Just("%".to_string()),
                Just("?".to_string()),
                Just("#".to_string()),
                Just("..".to_string()),
                "[a-z0-9%.~\\\\ \t]{0,4}",
                any::<char>().prop_map(String::from),
            ],
            0..8,
        )
    ) {
        let text = format!("{}{}", if slash { "/" } else { "" }, pieces.concat());
        let target = parse_target_text(&text);
        prop_assert_eq!(&target, &parse_target(text.as_bytes()));
        // The path and the query as sent are the text around its first `?`.
        if let Ok(t) = target {
            prop_assert_eq!(Some(t.raw_path()), t.original().split('?').next());
            prop_assert_eq!(t.query(), t.original().split_once('?').map(|(_, q)| q));
        }
    }
}

/// What [`scan`] must find, said as a spec (not as a pass, so that it shares nothing with
/// `scan` or [`Scan::take`]): the bytes up to the first outside visible ASCII, the `#` among
/// them, the first `?` among them, and a `\` or `%` among those before it.
fn scan_as_specified(raw: &[u8]) -> Scan {
    let visible = |b: &u8| (0x21..=0x7e).contains(b);
    let bad_at = raw.iter().position(|b| !visible(b));
    let seen = &raw[..bad_at.unwrap_or(raw.len())];
    let path_end = seen.iter().position(|&b| b == b'?');
    let path = &seen[..path_end.unwrap_or(seen.len())];
    Scan {
        bad_byte: bad_at.map(|at| raw[at]),
        fragment: seen.contains(&b'#'),
        path_end: path_end.unwrap_or(raw.len()),
        backslash: path.contains(&b'\\'),
        escaped: path.contains(&b'%'),
    }
}

/// A byte [`Scan::take`] must look at, said of the byte alone: outside visible ASCII, or one of
/// the four it looks for.
fn must_look(b: u8) -> bool {
    !(0x21..=0x7e).contains(&b) || b"#?\\%".contains(&b)
}

/// Every byte value at every place of a word of plain bytes: the word is [`notable`] exactly
/// when that byte is one [`Scan::take`] must look at.
#[test]
fn a_word_of_plain_bytes_is_notable_exactly_when_one_byte_is() {
    for plain in [0x21, 0x7e, b'a', b'/', b'0', 0x22, 0x7d] {
        assert!(!must_look(plain));
        for at in 0..8 {
            for b in 0..=255u8 {
                let mut word = [plain; 8];
                word[at] = b;
                assert_eq!(
                    notable(words::word(&word)),
                    must_look(b),
                    "{b:#04x} at {at} among {plain:#04x}"
                );
            }
        }
    }
}

/// Bytes a target's checks tell apart: each limit of visible ASCII and the bytes on either side
/// of it, the four [`scan`] looks for, a separator and a letter (and, one time in three, any
/// byte).
fn target_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        2 => prop::sample::select(vec![
            0x00, 0x20, 0x21, 0x7e, 0x7f, 0x80, 0xa0, 0xff, b'#', b'?', b'\\', b'%', b'/', b'a',
            b'"', b'$', b'>', b'@',
        ]),
        1 => any::<u8>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, failure_persistence: None, ..ProptestConfig::default() })]

    /// [`notable`] tells a word holding a byte [`scan`] must look at from one holding none, as
    /// a test of each byte does.
    #[test]
    fn a_word_is_notable_when_one_of_its_bytes_is(bytes in proptest::array::uniform8(target_byte())) {
        let one_by_one = bytes.iter().any(|&b| must_look(b));
        prop_assert_eq!(notable(words::word(&bytes)), one_by_one, "{:x?}", bytes);
    }

    /// The pass eight bytes at a time finds what its spec says it finds, wherever the
    /// bytes it looks for stand (mostly plain bytes, so that whole words are passed over).
    #[test]
    fn the_scan_finds_what_its_spec_finds(
        raw in proptest::collection::vec(
            prop_oneof![6 => Just(b'a'), 1 => Just(b'/'), 2 => target_byte()],
            0..48,
        )
    ) {
        prop_assert_eq!(scan(&raw), scan_as_specified(&raw), "{:?}", String::from_utf8_lossy(&raw));
    }
}
