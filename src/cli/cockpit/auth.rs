//! Who may ask the cockpit. On loopback (the default) anyone on the machine may, and only a
//! request naming the cockpit's own address in `Host` is answered: a web page the browser
//! loaded from elsewhere cannot read the site through a name that resolves to 127.0.0.1 (DNS
//! rebinding). Any other address needs `--auth-token-file`: every request then carries the
//! token, as `Authorization: Bearer TOKEN` or as the password of HTTP basic auth (any user
//! name), what a browser asks for after the 401's `WWW-Authenticate: Basic`. The comparison is
//! of SHA-256 digests in constant time (`subtle`): neither the token's bytes nor its length are
//! told by the time an answer takes.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{anyhow, bail};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The shortest token accepted (32 characters: `openssl rand -hex 16` and more).
pub const MIN_TOKEN_CHARS: usize = 32;

/// The token of `--auth-token-file`, kept only as its digest.
pub struct Token {
    digest: [u8; 32],
}

impl Token {
    /// The file's one line (a final newline is not part of it): at least [`MIN_TOKEN_CHARS`]
    /// visible ASCII characters.
    pub fn read(path: &Path) -> anyhow::Result<Token> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("--auth-token-file {}: {e}", path.display()))?;
        let token = text.strip_suffix('\n').unwrap_or(&text);
        let token = token.strip_suffix('\r').unwrap_or(token);
        if token.len() < MIN_TOKEN_CHARS || !token.bytes().all(|b| b.is_ascii_graphic()) {
            bail!(
                "--auth-token-file {}: the token must be one line of at least {MIN_TOKEN_CHARS} visible ASCII characters (e.g. `openssl rand -hex 32 > FILE`)",
                path.display()
            );
        }
        Ok(Token {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Whether `authorization` (the header's value) carries the token.
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(presented) = authorization.and_then(presented) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(&presented).into();
        digest.ct_eq(&self.digest).into()
    }
}

/// The secret an `Authorization` value presents: a bearer token, or basic auth's password.
fn presented(value: &[u8]) -> Option<Vec<u8>> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.as_bytes().to_vec());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let colon = decoded.iter().position(|b| *b == b':')?;
        return Some(decoded[colon + 1..].to_vec());
    }
    None
}

/// On loopback without a token: whether `host` (the `Host` header) names the cockpit itself,
/// as `127.0.0.1:PORT`, `localhost:PORT` or `[::1]:PORT`.
pub fn names_us(host: Option<&[u8]>, bound: SocketAddr) -> bool {
    let Some(host) = host.and_then(|h| std::str::from_utf8(h).ok()) else {
        return false;
    };
    let Some((name, port)) = host.rsplit_once(':') else {
        return false;
    };
    if port.parse::<u16>().ok() != Some(bound.port()) {
        return false;
    }
    let name = name.to_ascii_lowercase();
    name == "localhost"
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Refuses a non-loopback address without a token (exit 64 by the caller).
pub fn check_listen(addr: SocketAddr, token: Option<&Token>) -> anyhow::Result<()> {
    if token.is_none() && !addr.ip().is_loopback() {
        bail!(
            "--listen {addr}: not a loopback address, and no --auth-token-file: the cockpit shows who may reach what and who was denied, so on any other address every caller must present a token (--auth-token-file FILE; put TLS in front), or keep it on 127.0.0.1 and reach it through an SSH tunnel"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str) -> anyhow::Result<Token> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, text).unwrap();
        Token::read(&p)
    }

    #[test]
    fn the_token_is_taken_from_bearer_or_basic_auth_and_nothing_else() {
        let secret = "0123456789abcdef0123456789abcdef";
        let t = token(&format!("{secret}\n")).unwrap();
        assert!(t.admits(Some(format!("Bearer {secret}").as_bytes())));
        assert!(t.admits(Some(format!("bearer  {secret} ").as_bytes())));
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("ops:{secret}"));
        assert!(t.admits(Some(format!("Basic {basic}").as_bytes())));
        let wrong = base64::engine::general_purpose::STANDARD.encode(format!("{secret}:x"));
        assert!(!t.admits(Some(format!("Basic {wrong}").as_bytes())));
        assert!(!t.admits(Some(format!("Bearer {secret}x").as_bytes())));
        assert!(!t.admits(Some(secret.as_bytes())));
        assert!(!t.admits(None));
        assert!(token("short\n").is_err());
        assert!(token(&format!("{secret} with spaces")).is_err());
    }

    #[test]
    fn on_loopback_only_our_own_name_is_answered() {
        let bound: SocketAddr = "127.0.0.1:8089".parse().unwrap();
        for (host, ok) in [
            ("127.0.0.1:8089", true),
            ("localhost:8089", true),
            ("LOCALHOST:8089", true),
            ("[::1]:8089", true),
            ("evil.example:8089", false),
            ("127.0.0.1:80", false),
            ("127.0.0.1", false),
        ] {
            assert_eq!(names_us(Some(host.as_bytes()), bound), ok, "{host}");
        }
        assert!(!names_us(None, bound));
        assert!(check_listen("0.0.0.0:1".parse().unwrap(), None).is_err());
        assert!(check_listen("127.0.0.1:1".parse().unwrap(), None).is_ok());
    }
}
