//! A weights file read straight from the network, one tensor at a time, with HTTP range requests
//! (synchronous `XMLHttpRequest`, which dedicated workers may use): the path when the browser
//! cannot keep the file (no origin-private file system, or a full quota). Nothing is kept, so the
//! next load downloads again.

use std::borrow::Cow;

use wasm_bindgen::JsCast;
use web_sys::{XmlHttpRequest, XmlHttpRequestResponseType};

use crate::app::fetch::js_text;
use crate::error::{Error, Result};
use crate::weights::WeightFile;

pub struct RangeFile {
    url: String,
    len: u64,
}

// SAFETY: the wasm build is single-threaded; `WeightFile` is `Send + Sync` for native loaders.
unsafe impl Send for RangeFile {}
unsafe impl Sync for RangeFile {}

/// One synchronous GET of `url`, with a `Range` header when given.
fn get(
    url: &str,
    method: &str,
    range: Option<(u64, u64)>,
) -> std::result::Result<XmlHttpRequest, String> {
    let xhr = XmlHttpRequest::new().map_err(|e| js_text(&e))?;
    xhr.open_with_async(method, url, false)
        .map_err(|e| js_text(&e))?;
    if let Some((start, end)) = range {
        xhr.set_request_header("Range", &format!("bytes={start}-{}", end - 1))
            .map_err(|e| js_text(&e))?;
        xhr.set_response_type(XmlHttpRequestResponseType::Arraybuffer);
    }
    xhr.send()
        .map_err(|e| format!("cannot download ({})", js_text(&e)))?;
    Ok(xhr)
}

impl RangeFile {
    /// Ask the server for the file's length (a HEAD request).
    pub fn open(url: &str) -> Result<RangeFile> {
        let xhr = get(url, "HEAD", None).map_err(|e| Error::file(url, e))?;
        let status = xhr.status().unwrap_or(0);
        if status != 200 {
            return Err(Error::file(url, format!("HTTP {status}")));
        }
        let len = xhr
            .get_response_header("content-length")
            .ok()
            .flatten()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::file(url, "the server does not say the file's length"))?;
        Ok(RangeFile {
            url: url.to_string(),
            len,
        })
    }
}

impl WeightFile for RangeFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read(&self, start: u64, end: u64) -> std::result::Result<Cow<'_, [u8]>, String> {
        if start == end {
            return Ok(Cow::Owned(Vec::new()));
        }
        let xhr = get(&self.url, "GET", Some((start, end)))?;
        let status = xhr.status().unwrap_or(0);
        if status != 206 {
            return Err(format!(
                "HTTP {status} for a range request (the server must support ranges)"
            ));
        }
        let buffer: js_sys::ArrayBuffer = xhr
            .response()
            .map_err(|e| js_text(&e))?
            .dyn_into()
            .map_err(|_| "not binary data".to_string())?;
        let bytes = js_sys::Uint8Array::new(&buffer).to_vec();
        if bytes.len() as u64 != end - start {
            return Err(format!(
                "asked for {} bytes, got {}",
                end - start,
                bytes.len()
            ));
        }
        Ok(Cow::Owned(bytes))
    }
}
