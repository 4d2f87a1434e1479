//! `cargo xtask serve`: a small static HTTP/1.1 file server for the web app (std only).
//!
//! Serves only the public entries of the repository (`PUBLIC`: `index.html` and `web/`), never the
//! rest of the tree. A request path is percent-decoded before it is split, so `%2e%2e%2f` is a `..`
//! segment like any other; `..` segments, backslashes and NUL are refused; the file's canonical path
//! must stay inside its public entry, so a symlink cannot lead out. GET and HEAD only (RFC 9110),
//! one thread per connection, `Connection: close` after each response. The server sends
//! `Cache-Control: no-cache` (a rebuilt wasm must never be served stale) and the cross-origin
//! isolation headers (COOP/COEP), which the page needs for `SharedArrayBuffer` and fine timers.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// Top-level entries of the repository that the server exposes. The web-app build adds its output
/// folder here.
pub const PUBLIC: &[&str] = &["index.html", "sw.js", "web"];

/// Longest request head (request line + headers) accepted, in bytes.
const MAX_HEAD: u64 = 16 * 1024;

/// Time a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `root` on 127.0.0.1:`port` until the process is stopped.
pub fn serve(root: &Path, port: u16) -> io::Result<()> {
    let server = Server::bind(root, SocketAddr::from(([127, 0, 0, 1], port)))?;
    println!(
        "serving {} on http://{}/ (Ctrl-C to stop)",
        server.root.display(),
        server.local_addr()?
    );
    server.run()
}

/// A bound listener plus the canonical root it serves from.
pub struct Server {
    listener: TcpListener,
    root: Arc<PathBuf>,
}

impl Server {
    pub fn bind(root: &Path, addr: SocketAddr) -> io::Result<Server> {
        let root = Arc::new(root.canonicalize()?);
        let listener = TcpListener::bind(addr)?;
        Ok(Server { listener, root })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections forever, each on its own thread.
    pub fn run(self) -> io::Result<()> {
        for stream in self.listener.incoming() {
            match stream {
                Ok(stream) => {
                    let root = Arc::clone(&self.root);
                    thread::spawn(move || {
                        if let Err(e) = handle(&root, stream) {
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

/// Error statuses the server answers with.
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
}

fn handle(root: &Path, stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = io::BufWriter::new(stream);
    let request = match read_request(&mut reader) {
        Ok(request) => request,
        Err(status) => return send_error(&mut out, status, false),
    };
    let head_only = request.method == "HEAD";
    let outcome = if head_only || request.method == "GET" {
        resolve(root, &request.target)
    } else {
        Err(Status::MethodNotAllowed)
    };
    let code = match &outcome {
        Ok(_) => "200 OK",
        Err(status) => status.line(),
    };
    println!("{} {} -> {code}", request.method, request.target);
    match outcome {
        Ok(path) => send_file(&mut out, &path, head_only),
        Err(status) => send_error(&mut out, status, head_only),
    }
}

/// Reads the request line and skips the headers (nothing here depends on them).
fn read_request(reader: &mut impl BufRead) -> Result<Request, Status> {
    let mut head = reader.take(MAX_HEAD);
    let mut line = String::new();
    head.read_line(&mut line).map_err(|_| Status::BadRequest)?;
    let request = parse_request_line(line.trim_end_matches(['\r', '\n']))?;
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
    })
}

/// Maps a request target to a file under one of the public entries of `root` (canonical).
fn resolve(root: &Path, target: &str) -> Result<PathBuf, Status> {
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
            s => segments.push(s),
        }
    }
    if segments.is_empty() {
        segments.push("index.html");
    }
    if !PUBLIC.contains(&segments[0]) {
        return Err(Status::NotFound);
    }
    let mut file = root.to_path_buf();
    file.extend(&segments);
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

fn send_file(out: &mut impl Write, path: &Path, head_only: bool) -> io::Result<()> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    write_head(out, "200 OK", content_type(path), len, "")?;
    if !head_only {
        // Exactly the announced length, even if the file grows while it is being sent.
        io::copy(&mut (&mut file).take(len), out)?;
    }
    out.flush()
}

fn send_error(out: &mut impl Write, status: Status, head_only: bool) -> io::Result<()> {
    let body = format!("{}\n", status.line());
    let extra = match status {
        Status::MethodNotAllowed => "Allow: GET, HEAD\r\n",
        _ => "",
    };
    write_head(
        out,
        status.line(),
        "text/plain; charset=utf-8",
        body.len() as u64,
        extra,
    )?;
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
    /// must never be served (a secret beside web/, another outside the root).
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
            Site { dir }
        }

        fn root(&self) -> PathBuf {
            self.dir.join("root").canonicalize().unwrap()
        }
    }

    impl Drop for Site {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn served(site: &Site, target: &str) -> Result<String, Status> {
        resolve(&site.root(), target).map(|p| fs::read_to_string(p).unwrap())
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
                target: "/web/a.css".into()
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
        assert_eq!(read_request(&mut ok.as_bytes()).unwrap().target, "/");
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
        let server = Server::bind(&site.root(), "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        thread::spawn(move || server.run());

        let (head, body) = exchange(addr, "GET /web/style.css HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("\r\nContent-Type: text/css; charset=utf-8\r\n"));
        assert!(head.contains("\r\nContent-Length: 6\r\n"));
        assert_eq!(body, b"body{}");

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
}
