//! The HTTP transport's wire pieces: the `POST /api/telemetry` request with `X-API-Key`,
//! the response status line, and what to do with the batch afterwards; and the `GET` of a
//! firmware image with the response head ([`read_head`]) that says how long the body is.
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
    /// The response does not start with an `HTTP/1.x NNN` status line, or a header it needs
    /// (`Content-Length`) is malformed.
    BadResponse,
    /// The response's body is sent with a `Transfer-Encoding` (chunked), which this client
    /// does not read.
    TransferEncoding,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::BadUrl => "URL must look like http://host[:port]/path",
            Error::BadHeaderValue => "header value contains control characters",
            Error::BufferTooSmall => "request buffer too small",
            Error::BadResponse => "response has no HTTP status line or a bad Content-Length",
            Error::TransferEncoding => "response uses a Transfer-Encoding (chunked) body",
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

/// Writes the request line and the `Host` header (with the port when it is not the default).
fn write_start(w: &mut SliceWriter<'_>, method: &str, url: &Url<'_>) -> fmt::Result {
    write!(w, "{method} {} HTTP/1.1\r\nHost: {}", url.path, url.host)?;
    let default_port = if url.tls { 443 } else { 80 };
    if url.port != default_port {
        write!(w, ":{}", url.port)?;
    }
    w.write_str("\r\n")
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
    let head = write_start(&mut w, "POST", url).and_then(|()| {
        write!(
            w,
            "Content-Type: application/json\r\nX-API-Key: {api_key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
    });
    head.map_err(|_| Error::BufferTooSmall)?;
    let start = w.len;
    let end = start.checked_add(body.len()).ok_or(Error::BufferTooSmall)?;
    w.buf
        .get_mut(start..end)
        .ok_or(Error::BufferTooSmall)?
        .copy_from_slice(body);
    Ok(end)
}

/// Writes a `GET` request without a body (`Connection: close`) into `buf`, returning its
/// length.
pub fn write_get(buf: &mut [u8], url: &Url<'_>) -> Result<usize, Error> {
    let mut w = SliceWriter { buf, len: 0 };
    write_start(&mut w, "GET", url)
        .and_then(|()| w.write_str("Connection: close\r\n\r\n"))
        .map_err(|_| Error::BufferTooSmall)?;
    Ok(w.len)
}

/// The head of a response: its status, its body's length when it says, and where the body
/// starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// The `Content-Length`, when given.
    pub content_length: Option<u32>,
    /// Bytes of the head, up to and including the blank line: the body starts here.
    pub len: usize,
}

/// Reads a response head from the bytes received so far: `Ok(None)` while the blank line that
/// ends it has not arrived yet. Refuses a malformed or contradictory `Content-Length` and any
/// `Transfer-Encoding` (the body's length must be known to check a download).
pub fn read_head(received: &[u8]) -> Result<Option<ResponseHead>, Error> {
    let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let status = parse_status(received)?;
    let mut content_length = None;
    // the status line first, then one header a line
    for line in received[..end].split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(Error::BadResponse);
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(Error::TransferEncoding);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let len = parse_length(value).ok_or(Error::BadResponse)?;
            if content_length.is_some_and(|l| l != len) {
                return Err(Error::BadResponse);
            }
            content_length = Some(len);
        }
    }
    Ok(Some(ResponseHead {
        status,
        content_length,
        len: end + 4,
    }))
}

/// A decimal `Content-Length` that fits a `u32`.
fn parse_length(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u32, |n, &d| {
        n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    })
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

    #[test]
    fn builds_the_get_request() {
        let url = parse_url("http://192.168.1.10:8080/firmware/ab.bin").unwrap();
        let mut buf = [0u8; 128];
        let n = write_get(&mut buf, &url).unwrap();
        assert_eq!(
            core::str::from_utf8(&buf[..n]).unwrap(),
            "GET /firmware/ab.bin HTTP/1.1\r\nHost: 192.168.1.10:8080\r\nConnection: close\r\n\r\n"
        );
        let mut tight = vec![0u8; n];
        assert_eq!(write_get(&mut tight, &url), Ok(n));
        let mut short = vec![0u8; n - 1];
        assert_eq!(write_get(&mut short, &url), Err(Error::BufferTooSmall));
    }

    #[test]
    fn reads_a_response_head_as_it_arrives() {
        let response = b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\
                         Content-Length:  676944 \r\netag: \"ab\"\r\n\r\n\xe9\x03body";
        let head_len = response.len() - 6;
        // incomplete heads, in every cut: not yet
        for cut in 0..head_len {
            assert_eq!(read_head(&response[..cut]), Ok(None), "cut at {cut}");
        }
        let want = ResponseHead {
            status: 200,
            content_length: Some(676_944),
            len: head_len,
        };
        assert_eq!(read_head(&response[..head_len]), Ok(Some(want)));
        assert_eq!(read_head(response), Ok(Some(want)));
        // no length: the body runs to the end of the connection
        assert_eq!(
            read_head(b"HTTP/1.1 404 Not Found\r\n\r\n"),
            Ok(Some(ResponseHead {
                status: 404,
                content_length: None,
                len: 26
            }))
        );
        // the same length twice is fine
        let twice = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n";
        assert_eq!(
            read_head(twice).map(|h| h.map(|h| h.content_length)),
            Ok(Some(Some(5)))
        );
    }

    #[test]
    fn refuses_a_response_head_it_cannot_trust() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 4294967296\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert_eq!(
                read_head(bad),
                Err(Error::BadResponse),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            read_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(Error::TransferEncoding)
        );
    }
}
