//! The HTTP transport's wire pieces: the `POST /api/telemetry` request with `X-API-Key`,
//! the response status line, and what to do with the batch afterwards.
//!
//! Only HTTP/1.1 with `Connection: close` is used, so one TCP connection carries one
//! request and the response ends when the server closes it.

use core::fmt::{self, Write as _};

/// Why a request could not be built or a response not understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The URL is not `http://host[:port][/path]` (or `https://…`).
    BadUrl,
    /// A header value contains a control character (CR/LF would allow header injection).
    BadHeaderValue,
    /// The output buffer is too small.
    BufferTooSmall,
    /// The response does not start with an `HTTP/1.x NNN` status line.
    BadResponse,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::BadUrl => "URL must look like http://host[:port]/path",
            Error::BadHeaderValue => "header value contains control characters",
            Error::BufferTooSmall => "request buffer too small",
            Error::BadResponse => "response has no HTTP status line",
        })
    }
}

crate::impl_error!(Error);

/// A parsed `http://` or `https://` URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Url<'a> {
    /// `true` for `https`.
    pub tls: bool,
    /// Host name or IP literal.
    pub host: &'a str,
    /// Port (80/443 by default).
    pub port: u16,
    /// Path, `/` when none is given.
    pub path: &'a str,
}

/// Parses `http://host[:port][/path]` or `https://…`.
pub fn parse_url(url: &str) -> Result<Url<'_>, Error> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(Error::BadUrl);
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| Error::BadUrl)?),
        None => (authority, if tls { 443 } else { 80 }),
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'));
    if !host_ok || port == 0 || path.chars().any(|c| c.is_ascii_control() || c == ' ') {
        return Err(Error::BadUrl);
    }
    Ok(Url {
        tls,
        host,
        port,
        path,
    })
}

struct SliceWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
        self.buf
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Writes a complete `POST` request (headers and JSON body) into `buf`, returning its length.
pub fn write_post(
    buf: &mut [u8],
    url: &Url<'_>,
    api_key: &str,
    body: &[u8],
) -> Result<usize, Error> {
    if api_key.chars().any(|c| c.is_ascii_control()) {
        return Err(Error::BadHeaderValue);
    }
    let mut w = SliceWriter { buf, len: 0 };
    let default_port = if url.tls { 443 } else { 80 };
    let head = (|| -> fmt::Result {
        write!(w, "POST {} HTTP/1.1\r\nHost: {}", url.path, url.host)?;
        if url.port != default_port {
            write!(w, ":{}", url.port)?;
        }
        write!(
            w,
            "\r\nContent-Type: application/json\r\nX-API-Key: {api_key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
    })();
    head.map_err(|_| Error::BufferTooSmall)?;
    let start = w.len;
    let end = start.checked_add(body.len()).ok_or(Error::BufferTooSmall)?;
    w.buf
        .get_mut(start..end)
        .ok_or(Error::BufferTooSmall)?
        .copy_from_slice(body);
    Ok(end)
}

/// Reads the status code from the start of a response (`HTTP/1.1 200 OK`).
pub fn parse_status(response: &[u8]) -> Result<u16, Error> {
    let rest = response
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| response.strip_prefix(b"HTTP/1.0 "))
        .ok_or(Error::BadResponse)?;
    match rest {
        [a, b, c, tail @ ..]
            if [a, b, c].iter().all(|d| d.is_ascii_digit())
                && !tail.first().is_some_and(u8::is_ascii_digit) =>
        {
            Ok(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => Err(Error::BadResponse),
    }
}

/// What to do with a batch after the server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: stored; remove it from the backlog.
    Delivered,
    /// The server refused this batch itself (400, 413, 422): resending cannot help;
    /// drop it and count it.
    Rejected,
    /// Anything else (401/403 until the key is fixed, 429, 5xx, …): keep it and retry later.
    Retry,
}

/// Classifies a status code.
pub fn outcome(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        400 | 413 | 422 => Outcome::Rejected,
        _ => Outcome::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            parse_url("http://192.168.1.10:8080/api/telemetry"),
            Ok(Url {
                tls: false,
                host: "192.168.1.10",
                port: 8080,
                path: "/api/telemetry"
            })
        );
        assert_eq!(
            parse_url("https://genba.local"),
            Ok(Url {
                tls: true,
                host: "genba.local",
                port: 443,
                path: "/"
            })
        );
        assert_eq!(
            parse_url("http://genba.local/api/telemetry").map(|u| u.port),
            Ok(80)
        );
        for bad in [
            "ftp://x/",
            "http://",
            "http://:80/",
            "http://h:0/",
            "http://h:99999/",
            "http://h/a b",
            "http://u@h/",
        ] {
            assert_eq!(parse_url(bad), Err(Error::BadUrl), "{bad}");
        }
    }

    #[test]
    fn builds_the_post_request() {
        let url = parse_url("http://genba.local:8080/api/telemetry").unwrap();
        let body = br#"{"device_id":"d"}"#;
        let mut buf = [0u8; 512];
        let n = write_post(&mut buf, &url, "k-123", body).unwrap();
        let req = core::str::from_utf8(&buf[..n]).unwrap();
        assert_eq!(
            req,
            "POST /api/telemetry HTTP/1.1\r\nHost: genba.local:8080\r\nContent-Type: application/json\r\n\
             X-API-Key: k-123\r\nContent-Length: 17\r\nConnection: close\r\n\r\n{\"device_id\":\"d\"}"
        );
        // default port is not repeated in Host
        let url = parse_url("http://genba.local/api/telemetry").unwrap();
        let n = write_post(&mut buf, &url, "k", b"{}").unwrap();
        assert!(core::str::from_utf8(&buf[..n])
            .unwrap()
            .contains("\r\nHost: genba.local\r\n"));
        // header injection and small buffers are refused
        assert_eq!(
            write_post(&mut buf, &url, "k\r\nX-Evil: 1", b"{}"),
            Err(Error::BadHeaderValue)
        );
        let mut small = [0u8; 40];
        assert_eq!(
            write_post(&mut small, &url, "k", b"{}"),
            Err(Error::BufferTooSmall)
        );
        let mut exact = [0u8; 512];
        let need = write_post(&mut exact, &url, "k", b"{}").unwrap();
        let mut tight = vec![0u8; need];
        assert_eq!(write_post(&mut tight, &url, "k", b"{}"), Ok(need));
        let mut short = vec![0u8; need - 1];
        assert_eq!(
            write_post(&mut short, &url, "k", b"{}"),
            Err(Error::BufferTooSmall)
        );
    }

    #[test]
    fn reads_status_and_classifies() {
        assert_eq!(
            parse_status(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"),
            Ok(200)
        );
        assert_eq!(parse_status(b"HTTP/1.0 401 Unauthorized\r\n"), Ok(401));
        assert_eq!(parse_status(b"HTTP/1.1 204\r\n"), Ok(204));
        assert_eq!(parse_status(b"HTTP/1.1 2000 OK"), Err(Error::BadResponse));
        assert_eq!(parse_status(b"HTTP/2 200"), Err(Error::BadResponse));
        assert_eq!(parse_status(b""), Err(Error::BadResponse));
        assert_eq!(outcome(200), Outcome::Delivered);
        assert_eq!(outcome(201), Outcome::Delivered);
        assert_eq!(outcome(400), Outcome::Rejected);
        assert_eq!(outcome(401), Outcome::Retry);
        assert_eq!(outcome(429), Outcome::Retry);
        assert_eq!(outcome(503), Outcome::Retry);
    }
}
