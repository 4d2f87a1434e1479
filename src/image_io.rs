//! Decode image bytes (PNG, JPEG, WebP, GIF, BMP) to 8-bit RGB, safely.
//!
//! Follows what transformers does with an image file (`load_image`: PIL `Image.open`, EXIF
//! orientation applied, `.convert("RGB")`):
//! - the format is guessed from the content, never from the file name;
//! - gray is replicated to three channels; alpha is dropped without compositing (PIL's
//!   `convert("RGB")` discards it); palette images are looked up; CMYK JPEGs are converted
//!   (Adobe-inverted CMYK, as PIL reads them); an animated GIF gives its first frame;
//! - 16-bit samples keep their high byte (`v >> 8`). PIL does exactly this for 16-bit RGB(A) PNGs,
//!   but it *clips* 16-bit gray ("I;16") at 255, which turns most real images white; we keep the
//!   high byte there too, deliberately.
//!
//! Safety: the declared size is read from the header and refused when it exceeds the pixel cap
//! before any pixel buffer exists (decompression bombs); `image::Limits` bounds the decoder's own
//! allocations as a second guard. Every error is one line naming the input.

use std::io::{Cursor, ErrorKind};

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};

use crate::error::{Error, Result};

/// Default cap on width * height (40 megapixels: larger than any camera photo people caption,
/// small enough that the decoded buffer stays a few hundred MB at most).
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;

/// Bytes per pixel of the widest layout a decoder may produce (16-bit RGBA).
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// Decodes `bytes` to RGB, refusing images with more than `max_pixels` pixels (see
/// [`DEFAULT_MAX_PIXELS`]). `name` (a path, URL or "dropped image") is used in error messages.
pub fn decode_rgb(bytes: &[u8], name: &str, max_pixels: u64) -> Result<RgbImage> {
    let fail = |msg: String| Error::file(name, msg);
    if bytes.is_empty() {
        return Err(fail("empty file".into()));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    let Some(format) = reader.format() else {
        return Err(fail(unknown_format_message(bytes)));
    };
    let fmt = format_name(format);
    let mut limits = Limits::default();
    limits.max_alloc = Some(
        max_pixels
            .saturating_mul(MAX_BYTES_PER_PIXEL)
            .saturating_add(1 << 20),
    );
    reader.limits(limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| fail(decode_message(&e, fmt)))?;

    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels == 0 {
        return Err(fail(format!("{fmt} image has zero size ({w}x{h})")));
    }
    if pixels > max_pixels {
        return Err(fail(format!(
            "{fmt} image is too large: {w}x{h} = {pixels} pixels, the limit is {max_pixels}"
        )));
    }
    // A broken EXIF block should not make a readable image unreadable: decode it upright.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    // JPEG decoders fill a cut-off scan with gray and succeed; PIL says "image file is truncated".
    if format == ImageFormat::Jpeg && !jpeg_has_end(bytes) {
        return Err(fail(
            "truncated JPEG file (no end-of-image marker after the image data)".into(),
        ));
    }
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| fail(decode_message(&e, fmt)))?;
    img.apply_orientation(orientation);
    Ok(to_rgb(img))
}

/// Reads and decodes the file at `path`; errors name the path.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_rgb(path: &std::path::Path, max_pixels: u64) -> Result<RgbImage> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::file(&name, format!("cannot read: {e}")))?;
    decode_rgb(&bytes, &name, max_pixels)
}

/// PIL-style `convert("RGB")`, except 16-bit gray (see the module docs).
fn to_rgb(img: DynamicImage) -> RgbImage {
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageLuma16(_)
        | DynamicImage::ImageLumaA16(_)
        | DynamicImage::ImageRgb16(_)
        | DynamicImage::ImageRgba16(_) => {
            let wide = img.to_rgb16();
            RgbImage::from_fn(wide.width(), wide.height(), |x, y| {
                let p = wide.get_pixel(x, y).0;
                image::Rgb(p.map(|v| (v >> 8) as u8))
            })
        }
        // Gray is replicated, alpha dropped (no compositing), palette already expanded by the decoder.
        other => other.to_rgb8(),
    }
}

/// Walks the JPEG marker segments (skipping APPn blocks, which may hold a whole thumbnail JPEG,
/// and entropy-coded scan data) and reports whether the end-of-image marker is reached.
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let mut pos = 2; // after SOI
    loop {
        // A marker is 0xFF (possibly repeated as fill) and a code.
        while bytes.get(pos) == Some(&0xFF) && bytes.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        let (Some(0xFF), Some(&code)) = (bytes.get(pos), bytes.get(pos + 1)) else {
            return false;
        };
        pos += 2;
        match code {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => continue, // markers without a length
            _ => {}
        }
        let Some(len) = bytes
            .get(pos..pos + 2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            return false;
        };
        pos += len;
        if code == 0xDA {
            // Scan data: 0xFF is stuffed as FF 00 and restarts are FF D0-D7; anything else ends it.
            loop {
                match (bytes.get(pos), bytes.get(pos + 1)) {
                    (Some(0xFF), Some(0x00 | 0xD0..=0xD7)) => pos += 2,
                    (Some(0xFF), Some(_)) => break,
                    (Some(_), _) => pos += 1,
                    (None, _) => return false,
                }
            }
        }
    }
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::WebP => "WebP",
        ImageFormat::Gif => "GIF",
        ImageFormat::Bmp => "BMP",
        other => other.extensions_str().first().copied().unwrap_or("image"),
    }
}

/// Says what the bytes look like when they are not an image format we know.
fn unknown_format_message(bytes: &[u8]) -> String {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).to_ascii_lowercase();
    let supported = "supported formats are PNG, JPEG, WebP, GIF and BMP";
    if head.contains("<svg") {
        format!("SVG (vector) images are not supported; convert it to PNG or JPEG ({supported})")
    } else if std::str::from_utf8(&bytes[..bytes.len().min(512)]).is_ok() {
        format!("this is text, not an image ({supported})")
    } else {
        format!("not an image, or an unsupported format ({supported})")
    }
}

/// One line for a decoder error; truncation and limits get plain words.
fn decode_message(e: &ImageError, fmt: &str) -> String {
    match e {
        ImageError::IoError(io) if io.kind() == ErrorKind::UnexpectedEof => {
            format!("truncated {fmt} file (it ends before the image data does)")
        }
        ImageError::Limits(l) => format!("{fmt} image is too large to decode: {l}"),
        ImageError::Unsupported(u) => format!("unsupported {fmt} variant: {u}"),
        other => {
            // Some decoders put line breaks in their messages; keep ours on one line.
            let text = other
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            if looks_truncated(&text) {
                format!("truncated {fmt} file: {text}")
            } else {
                format!("corrupt {fmt} file: {text}")
            }
        }
    }
}

/// Decoders report premature ends in their own words.
fn looks_truncated(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "eof",
        "end of file",
        "unexpected end",
        "no more bytes",
        "truncated",
        "enough data",
        "enough bytes",
    ]
    .iter()
    .any(|s| t.contains(s))
}
