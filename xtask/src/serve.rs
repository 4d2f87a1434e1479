//! `cargo xtask serve`: a small static HTTP/1.1 file server for the web app (std only).
//!
//! Serves only the public entries of the repository (`PUBLIC`: `index.html` and `web/`), never the
//! rest of the tree. A request path is percent-decoded before it is split, so `%2e%2e%2f` is a `..`
//! segment like any other; `..` segments, backslashes and NUL are refused; the file's canonical path
//! must stay inside its public entry, so a symlink cannot lead out. GET and HEAD only (RFC 9110),
//! one thread per connection, `Connection: close` after each response. The server sends
//! `Cache-Control: no-cache` (a rebuilt wasm must never be served stale) and the cross-origin
//! isolation headers (COOP/COEP), which the page needs for `SharedArrayBuffer` and fine timers.
//!
//! Every file answers single byte ranges (RFC 9110 §14) and says so with `Accept-Ranges: bytes`:
//! `Range: bytes=A-B`, `bytes=A-` and `bytes=-N` get `206 Partial Content` with a `Content-Range`,
//! a start at or past the end gets `416 Range Not Satisfiable`, and anything else (several ranges,
//! a malformed header) is ignored: the whole file, 200. Only the requested part is read, in 1 MiB
//! chunks, so multi-GiB weights stream without being held in memory.
//!
//! With `--hub-dir DIR` (`ServeOptions::hub_dir`) the server also serves DIR in the Hugging Face
//! Hub's URL layout under `/hub/`: `/hub/<org>/<name>/resolve/<rev>/<file>` is
//! `DIR/<org>/<name>/<file>` and `/hub/<name>/resolve/<rev>/<file>` is `DIR/<name>/<file>`, so a
//! page given `?hub=http://127.0.0.1:PORT/hub` resolves model ids as it would on huggingface.co.
//! The revision is ignored (DIR holds one snapshot per model); it is one path segment, so a
//! revision with an encoded `/` (`refs%2Fpr%2F1`) is not supported. The same path rules apply, and
//! the canonical file must stay inside DIR. Hub responses add CORS headers (the real hub is another
//! origin) and an `ETag` (file size and mtime), so a client resuming a download can check that the
//! file did not change. `--drop-after BYTES` (`ServeOptions::drop_after`) is fault injection for
//! tests: the first GET of each hub file whose body is longer than BYTES announces the full length
//! but the connection closes after BYTES body bytes; later requests for that file are served whole.

use std::collections::HashSet;
use std::fs::{File, Metadata};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, UNIX_EPOCH};

/// Top-level entries of the repository that the server exposes. The web-app build adds its output
/// folder here.
pub const PUBLIC: &[&str] = &["index.html", "sw.js", "web"];

/// First path segment of the hub routes (`/hub/...`); not a public entry, so it cannot shadow one.
const HUB_PREFIX: &str = "hub";

/// Headers of every hub response: the page may load models from another origin, as from the real
/// hub, and must be able to read the range and validator headers to resume a download.
const HUB_HEADERS: &str = "Access-Control-Allow-Origin: *\r\n\
     Access-Control-Expose-Headers: Content-Length, Content-Range, Accept-Ranges, ETag\r\n";

/// Longest request head (request line + headers) accepted, in bytes.
const MAX_HEAD: u64 = 16 * 1024;

/// Time a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes read from a file per write: large enough for fast local copies, small enough that a
/// multi-GiB file never sits in memory.
const CHUNK: usize = 1 << 20;

/// What `cargo xtask serve` serves beyond the public files.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// A folder served in the Hugging Face Hub's URL layout under `/hub/`.
    pub hub_dir: Option<PathBuf>,
    /// Cut the first GET of each hub file after this many body bytes (resume tests).
    pub drop_after: Option<u64>,
}

/// Serves `root` (and the hub folder of `options`) on 127.0.0.1:`port` until the process is stopped.
pub fn serve(root: &Path, port: u16, options: &ServeOptions) -> io::Result<()> {
    let server = Server::bind(root, SocketAddr::from(([127, 0, 0, 1], port)), options)?;
    let addr = server.local_addr()?;
    println!(
        "serving {} on http://{addr}/ (Ctrl-C to stop)",
        server.shared.root.display()
    );
    if let Some(hub) = &server.shared.hub {
        println!("hub {} on http://{addr}/{HUB_PREFIX}", hub.display());
        println!("page with that hub: http://{addr}/?hub=http://{addr}/{HUB_PREFIX}");
    }
    if let Some(bytes) = server.shared.drop_after {
        println!("dropping the first GET of each hub file after {bytes} body bytes");
    }
    server.run()
}

/// A bound listener plus what every connection shares.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Server {
    pub fn bind(root: &Path, addr: SocketAddr, options: &ServeOptions) -> io::Result<Server> {
        let shared = Arc::new(Shared::new(root, options)?);
        let listener = TcpListener::bind(addr)?;
        Ok(Server { listener, shared })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections forever, each on its own thread.
    pub fn run(self) -> io::Result<()> {
        for stream in self.listener.incoming() {
            match stream {
                Ok(stream) => {
                    let shared = Arc::clone(&self.shared);
                    thread::spawn(move || {
                        if let Err(e) = handle(&shared, stream) {
                            eprintln!("serve: connection error: {e}");
                        }
                    });
                }
                Err(e) => eprintln!("serve: accept failed: {e}"),
            }
        }
        Ok(())
    }
}

/// The canonical folders served and the fault-injection state, shared by all connections.
struct Shared {
    root: PathBuf,
    hub: Option<PathBuf>,
    drop_after: Option<u64>,
    /// Hub files (canonical paths) whose first GET was already cut by `drop_after`.
    dropped: Mutex<HashSet<String>>,
}

impl Shared {
    fn new(root: &Path, options: &ServeOptions) -> io::Result<Shared> {
        let hub = match &options.hub_dir {
            Some(dir) => Some(canonical_dir(dir).map_err(|e| {
                io::Error::new(e.kind(), format!("hub dir {}: {e}", dir.display()))
            })?),
            None => None,
        };
        Ok(Shared {
            root: root.canonicalize()?,
            hub,
            drop_after: options.drop_after,
            dropped: Mutex::new(HashSet::new()),
        })
    }

    /// Maps a request target to a file: under `/hub/` when a hub folder is served, else a public
    /// file of the root.
    fn route(&self, target: &str) -> Routed {
        let segments = match target_segments(target) {
            Ok(segments) => segments,
            Err(status) => return Routed::error(status),
        };
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        match (&self.hub, segments.split_first()) {
            (Some(hub), Some((&HUB_PREFIX, rest))) => Routed {
                hub: true,
                file: resolve_hub(hub, rest),
            },
            _ => Routed {
                hub: false,
                file: resolve_public(&self.root, &segments),
            },
        }
    }

    /// How many body bytes to send before closing the connection, when `drop_after` applies: only
    /// the first GET of a hub file whose body is longer than the limit is cut, so a client that
    /// resumes (or retries) gets the rest.
    fn cut_at(&self, file: &Path, body_len: u64) -> Option<u64> {
        let limit = self.drop_after.filter(|&limit| body_len > limit)?;
        let mut dropped = self.dropped.lock().unwrap_or_else(PoisonError::into_inner);
        dropped
            .insert(file.to_string_lossy().into_owned())
            .then_some(limit)
    }
}

/// `dir` canonicalized, which must be a directory.
fn canonical_dir(dir: &Path) -> io::Result<PathBuf> {
    let dir = dir.canonicalize()?;
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a directory",
        ));
    }
    Ok(dir)
}

/// Where a request target leads.
struct Routed {
    /// A hub path: the response carries `HUB_HEADERS` (errors too, so a cross-origin page can
    /// read the status) and an ETag.
    hub: bool,
    file: Result<PathBuf, Status>,
}

impl Routed {
    fn error(status: Status) -> Routed {
        Routed {
            hub: false,
            file: Err(status),
        }
    }
}

/// Error statuses the server answers with before opening a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    BadRequest,
    NotFound,
    MethodNotAllowed,
}

impl Status {
    fn line(self) -> &'static str {
        match self {
            Status::BadRequest => "400 Bad Request",
            Status::NotFound => "404 Not Found",
            Status::MethodNotAllowed => "405 Method Not Allowed",
        }
    }
}

/// The parts of a request the server uses.
#[derive(Debug, PartialEq)]
struct Request {
    method: String,
    target: String,
    /// The `Range` header's value; repeated fields are joined with ", " (RFC 9110 §5.3), which
    /// makes them a multi-range request and so ignored.
    range: Option<String>,
}

fn handle(shared: &Shared, stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = io::BufWriter::new(stream);
    let request = match read_request(&mut reader) {
        Ok(request) => request,
        Err(status) => return send_error(&mut out, status, "", false),
    };
    let head_only = request.method == "HEAD";
    let mut routed = shared.route(&request.target);
    if !head_only && request.method != "GET" {
        routed.file = Err(Status::MethodNotAllowed);
    }
    let extra = if routed.hub { HUB_HEADERS } else { "" };
    match routed.file {
        Ok(path) => send_file(&mut out, shared, &request, &path, routed.hub),
        Err(status) => {
            log(&request, status.line());
            send_error(&mut out, status, extra, head_only)
        }
    }
}

/// One line per request: `METHOD TARGET [RANGE] -> CODE`.
fn log(request: &Request, code: &str) {
    match &request.range {
        Some(range) => println!("{} {} [{range}] -> {code}", request.method, request.target),
        None => println!("{} {} -> {code}", request.method, request.target),
    }
}

/// Reads the request line and the headers, keeping only `Range` (nothing else here depends on
/// them).
fn read_request(reader: &mut impl BufRead) -> Result<Request, Status> {
    let mut head = reader.take(MAX_HEAD);
    let mut line = String::new();
    head.read_line(&mut line).map_err(|_| Status::BadRequest)?;
    let mut request = parse_request_line(line.trim_end_matches(['\r', '\n']))?;
    loop {
        line.clear();
        let n = head.read_line(&mut line).map_err(|_| Status::BadRequest)?;
        if n == 0 || !line.ends_with('\n') {
            // EOF or the size limit before the blank line: the head is incomplete.
            return Err(Status::BadRequest);
        }
        if line == "\r\n" || line == "\n" {
            return Ok(request);
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                let value = value.trim();
                request.range = Some(match request.range.take() {
                    Some(previous) => format!("{previous}, {value}"),
                    None => value.to_string(),
                });
            }
        }
    }
}

/// `METHOD SP request-target SP HTTP/1.x`.
fn parse_request_line(line: &str) -> Result<Request, Status> {
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Status::BadRequest);
    };
    let method_ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if !method_ok || target.is_empty() || !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Err(Status::BadRequest);
    }
    Ok(Request {
        method: method.to_string(),
        target: target.to_string(),
        range: None,
    })
}

/// The path of a request target, percent-decoded and split into segments (empty and `.` dropped).
/// Decoding comes first so an encoded `/` or `..` is checked like a plain one; `..`, backslashes
/// and NUL are refused outright rather than normalized.
fn target_segments(target: &str) -> Result<Vec<String>, Status> {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') {
        return Err(Status::BadRequest);
    }
    let decoded = percent_decode(path)?;
    if decoded.contains(['\0', '\\']) {
        return Err(Status::BadRequest);
    }
    let mut segments = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => return Err(Status::BadRequest),
            s => segments.push(s.to_string()),
        }
    }
    Ok(segments)
}

/// Maps path segments to a file under one of the public entries of `root` (canonical).
fn resolve_public(root: &Path, segments: &[&str]) -> Result<PathBuf, Status> {
    let segments = if segments.is_empty() {
        &["index.html"][..]
    } else {
        segments
    };
    if !PUBLIC.contains(&segments[0]) {
        return Err(Status::NotFound);
    }
    let mut file = root.to_path_buf();
    file.extend(segments);
    if file.is_dir() {
        file.push("index.html");
    }
    // Canonical paths resolve symlinks: the file must lie inside its public entry, which must lie
    // inside the root.
    let mount = root
        .join(segments[0])
        .canonicalize()
        .map_err(|_| Status::NotFound)?;
    let file = file.canonicalize().map_err(|_| Status::NotFound)?;
    if !mount.starts_with(root) || !file.starts_with(&mount) || !file.is_file() {
        return Err(Status::NotFound);
    }
    Ok(file)
}

/// Maps the segments after `/hub/` to a file of the hub folder `hub` (canonical):
/// `<org>/<name>/resolve/<rev>/<file…>` is `hub/<org>/<name>/<file…>` and
/// `<name>/resolve/<rev>/<file…>` is `hub/<name>/<file…>`. The revision is ignored: the folder
/// holds one snapshot per model. A model named `resolve` under an org is read as the org-less form.
fn resolve_hub(hub: &Path, segments: &[&str]) -> Result<PathBuf, Status> {
    let model_len = match segments {
        [_, "resolve", ..] => 1,
        [_, _, "resolve", ..] => 2,
        _ => return Err(Status::NotFound),
    };
    let (model, rest) = segments.split_at(model_len);
    // `rest` is `resolve`, the revision, then the file's own path.
    let file_segments = rest.get(2..).unwrap_or_default();
    if file_segments.is_empty() {
        return Err(Status::NotFound);
    }
    let mut file = hub.to_path_buf();
    file.extend(model);
    file.extend(file_segments);
    // Symlinks inside the folder (a blob store beside the snapshots) are fine; out of it, not.
    let file = file.canonicalize().map_err(|_| Status::NotFound)?;
    if !file.starts_with(hub) || !file.is_file() {
        return Err(Status::NotFound);
    }
    Ok(file)
}

/// Decodes `%XX` escapes (RFC 3986); a malformed escape or non-UTF-8 result is a bad request.
fn percent_decode(s: &str) -> Result<String, Status> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(Status::BadRequest)?;
            let hex = std::str::from_utf8(hex).map_err(|_| Status::BadRequest)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| Status::BadRequest)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Status::BadRequest)
}

/// The part of a file a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Span {
    /// No usable `Range` header: the whole file, 200.
    Whole,
    /// Bytes `start..=end` (inclusive, as in `Content-Range`), 206.
    Part { start: u64, end: u64 },
    /// A single range that starts at or past the end, 416.
    Unsatisfiable,
}

/// Reads a `Range` header for a file of `size` bytes (RFC 9110 §14.1.2). Only one range is
/// served: a header with several, or one that does not parse, is ignored (the whole file), which
/// the RFC allows and every client handles.
fn parse_range(header: Option<&str>, size: u64) -> Span {
    match header.and_then(single_byte_range) {
        None => Span::Whole,
        // A zero-length suffix selects nothing; an empty file has no byte a 206 could name, so a
        // suffix of it is sent whole (and empty).
        Some(ByteRange::Suffix(0)) => Span::Unsatisfiable,
        Some(ByteRange::Suffix(_)) if size == 0 => Span::Whole,
        // The last N bytes: all of them when N is longer than the file.
        Some(ByteRange::Suffix(n)) => Span::Part {
            start: size.saturating_sub(n),
            end: size - 1,
        },
        Some(ByteRange::From(start, _)) if start >= size => Span::Unsatisfiable,
        // `bytes=A-` runs to the end; `bytes=A-B` past the end is cut at the end.
        Some(ByteRange::From(start, last)) => Span::Part {
            start,
            end: last.map_or(size - 1, |last| last.min(size - 1)),
        },
    }
}

/// One range of a `Range: bytes=...` header, before it meets a file size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ByteRange {
    /// `A-B` or `A-`: from A to B (inclusive) or to the end.
    From(u64, Option<u64>),
    /// `-N`: the last N bytes.
    Suffix(u64),
}

/// The range of a header holding exactly one `bytes=A-B`, `bytes=A-` or `bytes=-N`; None for
/// anything else, several ranges and A > B included.
fn single_byte_range(header: &str) -> Option<ByteRange> {
    let (unit, set) = header.trim().split_once('=')?;
    // Range units compare case-insensitively; a comma separates ranges.
    if !unit.eq_ignore_ascii_case("bytes") || set.contains(',') {
        return None;
    }
    let (first, last) = set.trim().split_once('-')?;
    match (position(first)?, position(last)?) {
        (None, Some(n)) => Some(ByteRange::Suffix(n)),
        (Some(first), Some(last)) if first > last => None,
        (Some(first), last) => Some(ByteRange::From(first, last)),
        (None, None) => None,
    }
}

/// A range position: empty (Some(None)), decimal digits that fit a u64 (Some(Some(n))), or not a
/// position at all (None; `u64::from_str` alone would also take a `+` sign).
fn position(s: &str) -> Option<Option<u64>> {
    if s.is_empty() {
        return Some(None);
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().map(Some)
}

/// The Content-Type for a file, by extension; unknown types are opaque bytes.
fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "txt" => "text/plain; charset=utf-8",
        "wgsl" => "text/wgsl; charset=utf-8",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "ico" => "image/x-icon",
        _ => "application/octet-stream",
    }
}

/// A validator for a file: its size and modification time, in hex. A rewritten file gets a new
/// one, so a client resuming a download compares it with the first part's and starts over when
/// they differ (the server itself does not evaluate If-Range or If-Match).
fn etag(meta: &Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("\"{:x}-{mtime:x}\"", meta.len())
}

fn write_head(
    out: &mut impl Write,
    status: &str,
    content_type: &str,
    len: u64,
    extra: &str,
) -> io::Result<()> {
    write!(
        out,
        "HTTP/1.1 {status}\r\n\
         Content-Type: {content_type}\r\n\
         Content-Length: {len}\r\n\
         Cache-Control: no-cache\r\n\
         Cross-Origin-Opener-Policy: same-origin\r\n\
         Cross-Origin-Embedder-Policy: require-corp\r\n\
         X-Content-Type-Options: nosniff\r\n\
         Connection: close\r\n\
         {extra}\r\n"
    )
}

/// Answers with the file at `path` (already checked), whole or the part its Range header asks
/// for, and logs the request.
fn send_file(
    out: &mut impl Write,
    shared: &Shared,
    request: &Request,
    path: &Path,
    hub: bool,
) -> io::Result<()> {
    let mut file = File::open(path)?;
    let meta = file.metadata()?;
    let size = meta.len();
    let head_only = request.method == "HEAD";
    let mut extra = String::from("Accept-Ranges: bytes\r\n");
    if hub {
        extra += HUB_HEADERS;
        extra += &format!("ETag: {}\r\n", etag(&meta));
    }
    let (status, start, len) = match parse_range(request.range.as_deref(), size) {
        Span::Whole => ("200 OK", 0, size),
        Span::Part { start, end } => {
            extra += &format!("Content-Range: bytes {start}-{end}/{size}\r\n");
            ("206 Partial Content", start, end - start + 1)
        }
        Span::Unsatisfiable => {
            log(request, "416 Range Not Satisfiable");
            extra += &format!("Content-Range: bytes */{size}\r\n");
            return send_text(out, "416 Range Not Satisfiable", &extra, head_only);
        }
    };
    log(request, status);
    write_head(out, status, content_type(path), len, &extra)?;
    if head_only {
        return out.flush();
    }
    file.seek(SeekFrom::Start(start))?;
    let cut = if hub { shared.cut_at(path, len) } else { None };
    if let Some(cut) = cut {
        eprintln!(
            "serve: --drop-after: closing {} after {cut} of {len} body bytes",
            request.target
        );
    }
    // Exactly the announced length (or the cut), even if the file grows while it is being sent.
    copy_exact(&mut file, out, cut.unwrap_or(len))?;
    out.flush()
}

/// Copies exactly `len` bytes from `file` to `out`, one chunk at a time. A file that shrank while
/// being sent is an error: the connection then closes short of Content-Length, which a client
/// sees as a truncated body rather than as a complete, wrong one.
fn copy_exact(file: &mut impl Read, out: &mut impl Write, len: u64) -> io::Result<()> {
    let mut buf = vec![0; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK))];
    let mut left = len;
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(CHUNK));
        file.read_exact(&mut buf[..n])?;
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// An error response; `extra` carries the hub's CORS headers on hub paths.
fn send_error(
    out: &mut impl Write,
    status: Status,
    extra: &str,
    head_only: bool,
) -> io::Result<()> {
    let allow = match status {
        Status::MethodNotAllowed => "Allow: GET, HEAD\r\n",
        _ => "",
    };
    send_text(out, status.line(), &format!("{allow}{extra}"), head_only)
}

/// A response whose body is its status line, as plain text (errors and 416).
fn send_text(out: &mut impl Write, status: &str, extra: &str, head_only: bool) -> io::Result<()> {
    let body = format!("{status}\n");
    let content_type = "text/plain; charset=utf-8";
    write_head(out, status, content_type, body.len() as u64, extra)?;
    if !head_only {
        out.write_all(body.as_bytes())?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A throw-away site: index.html, web/ (with a nested index and two symlinks) and files that
    /// must never be served (a secret beside web/, another outside the root), plus a hub folder
    /// beside the root: `org/name/config.json`, `org/name/sub/w.bin`, `name/x.bin` (1000 bytes) and
    /// a symlink `org/name/leak.txt` out of the hub folder.
    struct Site {
        dir: PathBuf,
    }

    impl Site {
        fn new() -> Site {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("xtask-serve-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            let root = dir.join("root");
            fs::create_dir_all(root.join("web/sub")).unwrap();
            fs::write(root.join("index.html"), "<p>home</p>").unwrap();
            fs::write(root.join("web/style.css"), "body{}").unwrap();
            fs::write(root.join("web/sub/index.html"), "sub").unwrap();
            fs::write(root.join("secret.txt"), "root secret").unwrap();
            fs::write(dir.join("outside.txt"), "outside secret").unwrap();
            std::os::unix::fs::symlink(dir.join("outside.txt"), root.join("web/escape.txt"))
                .unwrap();
            std::os::unix::fs::symlink("../secret.txt", root.join("web/sideways.txt")).unwrap();
            fs::write(root.join("web/ok.txt"), "ok").unwrap();
            std::os::unix::fs::symlink("ok.txt", root.join("web/alias.txt")).unwrap();
            let hub = dir.join("hub");
            fs::create_dir_all(hub.join("org/name/sub")).unwrap();
            fs::create_dir_all(hub.join("name")).unwrap();
            fs::write(hub.join("org/name/config.json"), CONFIG).unwrap();
            fs::write(hub.join("org/name/sub/w.bin"), "w").unwrap();
            fs::write(hub.join("name/x.bin"), x_bin()).unwrap();
            std::os::unix::fs::symlink(dir.join("outside.txt"), hub.join("org/name/leak.txt"))
                .unwrap();
            Site { dir }
        }

        fn root(&self) -> PathBuf {
            self.dir.join("root").canonicalize().unwrap()
        }

        /// The shared state of a server on this site and its hub folder.
        fn shared(&self) -> Shared {
            let options = ServeOptions {
                hub_dir: Some(self.dir.join("hub")),
                drop_after: None,
            };
            Shared::new(&self.dir.join("root"), &options).unwrap()
        }

        /// A live server on this site with its hub, on an ephemeral port.
        fn start(&self, drop_after: Option<u64>) -> SocketAddr {
            let options = ServeOptions {
                hub_dir: Some(self.dir.join("hub")),
                drop_after,
            };
            let localhost = "127.0.0.1:0".parse().unwrap();
            let server = Server::bind(&self.dir.join("root"), localhost, &options).unwrap();
            let addr = server.local_addr().unwrap();
            thread::spawn(move || server.run());
            addr
        }
    }

    const CONFIG: &str = "{\"hidden_size\": 8}";

    /// `name/x.bin`: 1000 bytes that differ from their neighbours, so a wrong offset shows.
    fn x_bin() -> Vec<u8> {
        (0..1000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    impl Drop for Site {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn served(site: &Site, target: &str) -> Result<String, Status> {
        let routed = site.shared().route(target);
        routed.file.map(|p| fs::read_to_string(p).unwrap())
    }

    #[test]
    fn public_files_resolve() {
        let site = Site::new();
        assert_eq!(served(&site, "/").unwrap(), "<p>home</p>");
        assert_eq!(served(&site, "/index.html").unwrap(), "<p>home</p>");
        assert_eq!(served(&site, "/web/style.css?v=3#x").unwrap(), "body{}");
        assert_eq!(served(&site, "/web/./style.css").unwrap(), "body{}");
        assert_eq!(served(&site, "/web/%73tyle.css").unwrap(), "body{}");
        assert_eq!(served(&site, "/web/sub/").unwrap(), "sub");
        assert_eq!(served(&site, "/web/alias.txt").unwrap(), "ok");
    }

    #[test]
    fn traversal_is_rejected() {
        let site = Site::new();
        for target in [
            "/../secret.txt",
            "/web/../secret.txt",
            "/web/../../outside.txt",
            "/%2e%2e/secret.txt",
            "/web/%2E%2E%2Fsecret.txt",
            "/web/..%2fsecret.txt",
            "/web%2f..%2f..%2foutside.txt",
            "/web\\..\\secret.txt",
            "/web/%5c..%5csecret.txt",
            "/web/style.css%00.html",
            "/web/%zz",
            "/web/%2",
            "/web/%ff",
            "web/style.css",
            "http://localhost/index.html",
        ] {
            assert_eq!(served(&site, target), Err(Status::BadRequest), "{target}");
        }
    }

    #[test]
    fn non_public_and_escaping_paths_are_not_found() {
        let site = Site::new();
        for target in [
            "/secret.txt",
            "//secret.txt",
            "/etc/passwd",
            "//etc/passwd",
            "/web/escape.txt",
            "/web/sideways.txt",
            "/web/missing.css",
            "/web",
            "/index.html/x",
        ] {
            assert_eq!(served(&site, target), Err(Status::NotFound), "{target}");
        }
    }

    #[test]
    fn content_types_follow_the_extension() {
        for (file, expected) in [
            ("index.html", "text/html; charset=utf-8"),
            ("app.js", "text/javascript; charset=utf-8"),
            ("app_bg.wasm", "application/wasm"),
            ("style.css", "text/css; charset=utf-8"),
            ("tokenizer.json", "application/json"),
            ("icon.PNG", "image/png"),
            ("logo.svg", "image/svg+xml"),
            ("model.safetensors", "application/octet-stream"),
            ("weights.bin", "application/octet-stream"),
            ("notes.txt", "text/plain; charset=utf-8"),
            ("Makefile", "application/octet-stream"),
        ] {
            assert_eq!(content_type(Path::new(file)), expected, "{file}");
        }
    }

    #[test]
    fn request_lines_parse_strictly() {
        assert_eq!(
            parse_request_line("GET /web/a.css HTTP/1.1"),
            Ok(Request {
                method: "GET".into(),
                target: "/web/a.css".into(),
                range: None,
            })
        );
        for bad in [
            "",
            "GET",
            "GET /",
            "GET / HTTP/2",
            "get / HTTP/1.1",
            "GET  / HTTP/1.1",
            "GET / HTTP/1.1 x",
        ] {
            assert_eq!(parse_request_line(bad), Err(Status::BadRequest), "{bad:?}");
        }
    }

    #[test]
    fn request_heads_must_end_with_a_blank_line_within_the_limit() {
        let ok = "GET / HTTP/1.1\r\nHost: x\r\n\r\nignored body";
        let request = read_request(&mut ok.as_bytes()).unwrap();
        assert_eq!((request.target.as_str(), request.range), ("/", None));
        let truncated = "GET / HTTP/1.1\r\nHost: x\r\n";
        assert_eq!(
            read_request(&mut truncated.as_bytes()),
            Err(Status::BadRequest)
        );
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        assert_eq!(read_request(&mut huge.as_bytes()), Err(Status::BadRequest));
    }

    /// Sends one raw request to a live server and returns (head, body).
    fn exchange(addr: SocketAddr, request: &str) -> (String, Vec<u8>) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("response has a head");
        // Keep the head's last CRLF so every header line ends with "\r\n".
        let head = String::from_utf8(response[..split + 2].to_vec()).unwrap();
        (head, response[split + 4..].to_vec())
    }

    #[test]
    fn live_server_answers_get_head_and_errors() {
        let site = Site::new();
        let localhost = "127.0.0.1:0".parse().unwrap();
        let server = Server::bind(&site.root(), localhost, &ServeOptions::default()).unwrap();
        let addr = server.local_addr().unwrap();
        thread::spawn(move || server.run());

        let (head, body) = exchange(addr, "GET /web/style.css HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("\r\nContent-Type: text/css; charset=utf-8\r\n"));
        assert!(head.contains("\r\nContent-Length: 6\r\n"));
        assert!(head.contains("\r\nAccept-Ranges: bytes\r\n"));
        assert!(!head.contains("Access-Control-Allow-Origin"), "{head}");
        assert_eq!(body, b"body{}");

        // Without --hub-dir, /hub/ is not a public entry.
        let (head, _) = exchange(addr, "GET /hub/name/resolve/main/x.bin HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");

        let (head, body) = exchange(addr, "HEAD /index.html HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("\r\nContent-Length: 11\r\n"));
        assert!(body.is_empty());

        let (head, _) = exchange(addr, "POST /index.html HTTP/1.1\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nAllow: GET, HEAD\r\n"));

        let (head, body) = exchange(addr, "GET /web/nope.js HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
        assert_eq!(body, b"404 Not Found\n");

        let (head, _) = exchange(addr, "GET /%2e%2e/outside.txt HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
    }

    #[test]
    fn request_heads_keep_the_range_header() {
        let head = "GET /x HTTP/1.1\r\nHost: x\r\nrAnGe:  bytes=5-9 \r\nX-Range: no\r\n\r\n";
        let request = read_request(&mut head.as_bytes()).unwrap();
        assert_eq!(request.range.as_deref(), Some("bytes=5-9"));
        // Repeated fields join into a list, which is then a multi-range request.
        let head = "GET /x HTTP/1.1\r\nRange: bytes=0-1\r\nRange: bytes=4-5\r\n\r\n";
        let request = read_request(&mut head.as_bytes()).unwrap();
        assert_eq!(request.range.as_deref(), Some("bytes=0-1, bytes=4-5"));
        assert_eq!(parse_range(request.range.as_deref(), 10), Span::Whole);
    }

    #[test]
    fn ranges_select_single_parts() {
        let part = |start, end| Span::Part { start, end };
        for (header, expected) in [
            ("bytes=0-0", part(0, 0)),
            ("bytes=10-19", part(10, 19)),
            ("bytes=10-", part(10, 99)),
            ("bytes=90-1000", part(90, 99)),
            ("bytes=99-99", part(99, 99)),
            ("bytes=-10", part(90, 99)),
            ("bytes=-1000", part(0, 99)),
            ("BYTES=1-2", part(1, 2)),
            (" bytes=1-2 ", part(1, 2)),
        ] {
            assert_eq!(parse_range(Some(header), 100), expected, "{header}");
        }
    }

    #[test]
    fn ranges_past_the_end_are_unsatisfiable() {
        for header in ["bytes=100-", "bytes=100-200", "bytes=5000-6000", "bytes=-0"] {
            assert_eq!(
                parse_range(Some(header), 100),
                Span::Unsatisfiable,
                "{header}"
            );
        }
        assert_eq!(parse_range(Some("bytes=0-"), 0), Span::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-5"), 0), Span::Whole);
    }

    #[test]
    fn malformed_and_multiple_ranges_send_the_whole_file() {
        assert_eq!(parse_range(None, 100), Span::Whole);
        for header in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=5",
            "bytes=9-5",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=1-+2",
            "bytes=1--2",
            "bytes=0x1-2",
            "bytes = 1-2",
            "bytes=99999999999999999999999-",
            "items=0-5",
            "bytes=0-1,4-5",
            "bytes=0-1, -5",
        ] {
            assert_eq!(parse_range(Some(header), 100), Span::Whole, "{header:?}");
        }
    }

    #[test]
    fn copy_exact_streams_exactly_the_requested_bytes() {
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| i as u8).collect();
        let mut out = Vec::new();
        copy_exact(&mut &data[..], &mut out, data.len() as u64 - 5).unwrap();
        assert_eq!(out, data[..data.len() - 5]);
        // A file shorter than announced is an error, not a quietly short body.
        let err = copy_exact(&mut &data[..10], &mut Vec::new(), 11).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    fn hub_file(site: &Site, target: &str) -> Result<Vec<u8>, Status> {
        let routed = site.shared().route(target);
        assert!(routed.hub, "{target}");
        routed.file.map(|p| fs::read(p).unwrap())
    }

    #[test]
    fn hub_paths_resolve_with_and_without_an_org() {
        let site = Site::new();
        let config = CONFIG.as_bytes();
        assert_eq!(
            hub_file(&site, "/hub/org/name/resolve/main/config.json").unwrap(),
            config
        );
        assert_eq!(
            hub_file(&site, "/hub/org/name/resolve/v1.0/config.json?x=1").unwrap(),
            config
        );
        assert_eq!(
            hub_file(&site, "/hub/org/name/resolve/main/sub/w.bin").unwrap(),
            b"w"
        );
        assert_eq!(
            hub_file(&site, "/hub/org%2Fname/resolve/main/config.json").unwrap(),
            config
        );
        assert_eq!(
            hub_file(&site, "/hub/name/resolve/abc123/x.bin").unwrap(),
            x_bin()
        );
        for target in [
            "/hub/org/name/resolve/main/missing.json",
            "/hub/org/name/resolve/main/",
            "/hub/org/name/resolve/main",
            "/hub/org/name/resolve/main/sub",
            "/hub/org/name/blob/main/config.json",
            "/hub/org/name/config.json",
            "/hub/org/name/resolve/main/leak.txt",
            "/hub/name/resolve/main/x.bin/more",
            "/hub",
        ] {
            assert_eq!(hub_file(&site, target), Err(Status::NotFound), "{target}");
        }
    }

    #[test]
    fn hub_traversal_is_rejected() {
        let site = Site::new();
        for target in [
            "/hub/org/name/resolve/main/../../../../outside.txt",
            "/hub/../root/secret.txt",
            "/hub/org/name/resolve/main/%2e%2e/%2e%2e/%2e%2e/outside.txt",
            "/hub/org/name/resolve/main/..%2f..%2f..%2foutside.txt",
            "/hub/org/name/resolve/main/..\\..\\config.json",
            "/hub/org/name/resolve/main/config.json%00",
        ] {
            let routed = site.shared().route(target);
            assert_eq!(routed.file, Err(Status::BadRequest), "{target}");
        }
    }

    /// The value of a response header (names as the server spells them).
    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        let prefix = format!("\r\n{name}: ");
        let start = head.find(&prefix)? + prefix.len();
        head[start..].split("\r\n").next()
    }

    /// The status line of a response head.
    fn status(head: &str) -> &str {
        head.split("\r\n").next().unwrap_or_default()
    }

    /// `METHOD target` as a raw HTTP/1.1 request, with a `Range` header when given.
    fn request(method: &str, target: &str, range: Option<&str>) -> String {
        let range = range.map_or(String::new(), |r| format!("Range: {r}\r\n"));
        format!("{method} {target} HTTP/1.1\r\nHost: x\r\n{range}\r\n")
    }

    const X_BIN: &str = "/hub/name/resolve/abc123/x.bin";

    #[test]
    fn live_hub_paths_resolve_with_cors_and_etag() {
        let site = Site::new();
        let addr = site.start(None);
        let target = "/hub/org/name/resolve/main/config.json";
        let (head, body) = exchange(addr, &request("GET", target, None));
        assert_eq!(status(&head), "HTTP/1.1 200 OK", "{head}");
        assert_eq!(body, CONFIG.as_bytes());
        assert_eq!(header(&head, "Content-Type"), Some("application/json"));
        assert_eq!(header(&head, "Accept-Ranges"), Some("bytes"));
        assert_eq!(header(&head, "Access-Control-Allow-Origin"), Some("*"));
        let exposed = "Content-Length, Content-Range, Accept-Ranges, ETag";
        assert_eq!(
            header(&head, "Access-Control-Expose-Headers"),
            Some(exposed)
        );
        let etag = header(&head, "ETag").expect("an ETag");
        assert!(
            etag.starts_with(&format!("\"{:x}-", CONFIG.len())),
            "{etag}"
        );

        let (head, body) = exchange(addr, &request("GET", X_BIN, None));
        assert_eq!(status(&head), "HTTP/1.1 200 OK", "{head}");
        assert_eq!(body, x_bin());

        // Errors on hub paths carry CORS too, so a cross-origin page can read the status.
        let missing = "/hub/org/name/resolve/main/nope.bin";
        let (head, _) = exchange(addr, &request("GET", missing, None));
        assert_eq!(status(&head), "HTTP/1.1 404 Not Found", "{head}");
        assert_eq!(header(&head, "Access-Control-Allow-Origin"), Some("*"));
        let leak = "/hub/org/name/resolve/main/leak.txt";
        let (head, _) = exchange(addr, &request("GET", leak, None));
        assert_eq!(status(&head), "HTTP/1.1 404 Not Found", "{head}");
        let up = "/hub/org/name/resolve/main/%2e%2e/%2e%2e/%2e%2e/outside.txt";
        let (head, _) = exchange(addr, &request("GET", up, None));
        assert_eq!(status(&head), "HTTP/1.1 400 Bad Request", "{head}");
    }

    #[test]
    fn live_ranges_answer_206_416_or_the_whole_file() {
        let site = Site::new();
        let addr = site.start(None);
        let x = x_bin();
        let (head, body) = exchange(addr, &request("GET", X_BIN, Some("bytes=100-199")));
        assert_eq!(status(&head), "HTTP/1.1 206 Partial Content", "{head}");
        assert_eq!(header(&head, "Content-Range"), Some("bytes 100-199/1000"));
        assert_eq!(header(&head, "Content-Length"), Some("100"));
        assert!(header(&head, "ETag").is_some(), "{head}");
        assert_eq!(body, x[100..200]);

        let (head, body) = exchange(addr, &request("GET", X_BIN, Some("bytes=-24")));
        assert_eq!(header(&head, "Content-Range"), Some("bytes 976-999/1000"));
        assert_eq!(body, x[976..]);

        let (head, body) = exchange(addr, &request("HEAD", X_BIN, Some("bytes=990-")));
        assert_eq!(status(&head), "HTTP/1.1 206 Partial Content", "{head}");
        assert_eq!(header(&head, "Content-Length"), Some("10"));
        assert!(body.is_empty());

        let (head, body) = exchange(addr, &request("GET", X_BIN, Some("bytes=1000-")));
        assert_eq!(
            status(&head),
            "HTTP/1.1 416 Range Not Satisfiable",
            "{head}"
        );
        assert_eq!(header(&head, "Content-Range"), Some("bytes */1000"));
        assert_eq!(body, b"416 Range Not Satisfiable\n");

        let (head, body) = exchange(addr, &request("GET", X_BIN, Some("bytes=0-1,5-6")));
        assert_eq!(status(&head), "HTTP/1.1 200 OK", "{head}");
        assert_eq!(body, x);

        // Public files take ranges too, without the hub's headers.
        let (head, body) = exchange(addr, &request("GET", "/web/style.css", Some("bytes=1-3")));
        assert_eq!(status(&head), "HTTP/1.1 206 Partial Content", "{head}");
        assert_eq!(body, b"ody");
        assert!(header(&head, "ETag").is_none(), "{head}");
    }

    #[test]
    fn live_drop_after_cuts_only_the_first_get_of_a_file() {
        let site = Site::new();
        let addr = site.start(Some(100));
        let x = x_bin();
        // Bodies no longer than the limit (a HEAD, a short range, a small file) are never cut and
        // do not use up the file's drop.
        let (_, body) = exchange(addr, &request("HEAD", X_BIN, None));
        assert!(body.is_empty());
        let (_, body) = exchange(addr, &request("GET", X_BIN, Some("bytes=0-99")));
        assert_eq!(body, x[..100]);
        let config = "/hub/org/name/resolve/main/config.json";
        let (_, body) = exchange(addr, &request("GET", config, None));
        assert_eq!(body, CONFIG.as_bytes());

        let (head, body) = exchange(addr, &request("GET", X_BIN, None));
        assert_eq!(status(&head), "HTTP/1.1 200 OK", "{head}");
        assert_eq!(header(&head, "Content-Length"), Some("1000"));
        assert_eq!(body, x[..100], "cut after exactly 100 body bytes");

        // The resume (under another revision: the same file) and a fresh GET come in full.
        let other_rev = "/hub/name/resolve/main/x.bin";
        let (head, body) = exchange(addr, &request("GET", other_rev, Some("bytes=100-")));
        assert_eq!(header(&head, "Content-Range"), Some("bytes 100-999/1000"));
        assert_eq!(body, x[100..]);
        let (_, body) = exchange(addr, &request("GET", X_BIN, None));
        assert_eq!(body, x);
    }
}
