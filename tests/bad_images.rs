//! Broken, hostile and unsupported inputs: each must give one clear error naming the file, fast,
//! and never panic.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use spec_llava::image_io::{decode_rgb, load_rgb, DEFAULT_MAX_PIXELS};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/images")
        .join(name);
    std::fs::read(path).expect("fixture image")
}

/// Decodes and expects an error that starts with the name and mentions every needle.
fn expect_err(bytes: &[u8], name: &str, needles: &[&str]) -> String {
    expect_err_capped(bytes, name, DEFAULT_MAX_PIXELS, needles)
}

fn expect_err_capped(bytes: &[u8], name: &str, max_pixels: u64, needles: &[&str]) -> String {
    let msg = match decode_rgb(bytes, name, max_pixels) {
        Ok(img) => panic!(
            "{name}: decoded to {}x{} instead of failing",
            img.width(),
            img.height()
        ),
        Err(e) => e.to_string(),
    };
    println!("{msg}");
    assert!(
        msg.starts_with(&format!("{name}: ")),
        "error should name the file: {msg}"
    );
    assert!(!msg.contains('\n'), "error should be one line: {msg}");
    let what = msg[name.len() + 2..].to_lowercase();
    for n in needles {
        assert!(
            what.contains(&n.to_lowercase()),
            "error should mention {n:?}: {msg}"
        );
    }
    msg
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, tag: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(tag);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A well-formed PNG header declaring `w` x `h` 8-bit RGB, with a tiny IDAT (the zlib stream of
/// one empty row) and IEND: what a decompression bomb looks like before inflation.
fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut png, b"IHDR", &ihdr);
    png_chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01],
    );
    png_chunk(&mut png, b"IEND", &[]);
    png
}

#[test]
fn empty_file() {
    expect_err(&[], "empty.png", &["empty"]);
}

#[test]
fn truncated_png() {
    let png = fixture("at32.png");
    for cut in [20, 60, png.len() / 2, png.len() - 20] {
        expect_err(&png[..cut], "cut.png", &["PNG", "truncated"]);
    }
}

#[test]
fn truncated_jpeg() {
    let jpg = fixture("photo.jpg");
    for cut in [4, 200, jpg.len() / 2, jpg.len() - 10, jpg.len() - 1] {
        expect_err(&jpg[..cut], "cut.jpg", &["JPEG", "truncated"]);
    }
    // Bytes after the end marker (cameras append data) are fine.
    let mut padded = jpg.clone();
    padded.extend_from_slice(&[0xFF, 0xDA, 0x12, 0x34, 0, 0, 0]);
    assert_eq!(
        decode_rgb(&padded, "padded.jpg", DEFAULT_MAX_PIXELS)
            .unwrap()
            .dimensions(),
        (80, 60)
    );
}

#[test]
fn truncated_gif_and_webp() {
    let gif = fixture("anim.gif");
    expect_err(&gif[..gif.len() / 3], "cut.gif", &["GIF"]);
    let webp = fixture("lossless.webp");
    expect_err(&webp[..webp.len() / 2], "cut.webp", &["WebP"]);
}

#[test]
fn random_bytes() {
    // A fixed xorshift stream: not text, no known magic number.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    expect_err(&bytes, "noise.bin", &["not an image"]);
}

#[test]
fn svg_and_text() {
    let svg = br#"<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>"#;
    expect_err(svg, "drawing.svg", &["SVG", "PNG"]);
    expect_err(b"a caption, not a picture\n", "notes.txt", &["text"]);
}

#[test]
fn decompression_bomb_is_refused_before_decoding() {
    let bomb = png_declaring(100_000, 100_000);
    assert!(bomb.len() < 100);
    let start = Instant::now();
    expect_err(
        &bomb,
        "bomb.png",
        &[
            "too large",
            "100000x100000",
            &DEFAULT_MAX_PIXELS.to_string(),
        ],
    );
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "took {:?}",
        start.elapsed()
    );
    // Just over a small cap is refused too; just under it decodes past the check (and then
    // fails only because the pixel data is missing).
    expect_err_capped(
        &png_declaring(101, 100),
        "cap.png",
        10_000,
        &["too large", "101x100", "10000"],
    );
    let msg = match decode_rgb(&png_declaring(100, 100), "ok.png", 10_000) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };
    assert!(!msg.contains("too large"), "{msg}");
}

#[test]
fn zero_size() {
    // The PNG decoder refuses a zero width itself.
    expect_err(&png_declaring(0, 10), "zero.png", &["PNG", "dimensions"]);
    // A GIF with a 0x0 screen and a 0x0 frame gets through the decoder to our own check.
    let gif = b"GIF89a\x00\x00\x00\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x02\x44\x01\x00\x3b";
    expect_err(gif, "zero.gif", &["GIF", "zero size", "0x0"]);
}

#[test]
fn load_rgb_names_the_path() {
    let missing = Path::new("/nonexistent/dir/photo.jpg");
    let msg = load_rgb(missing, DEFAULT_MAX_PIXELS)
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("/nonexistent/dir/photo.jpg: cannot read"),
        "{msg}"
    );
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/tall.png");
    assert_eq!(
        load_rgb(&path, DEFAULT_MAX_PIXELS).unwrap().dimensions(),
        (45, 70)
    );
    let msg = load_rgb(&path, 1000).unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!("{}: ", path.display())) && msg.contains("too large"),
        "{msg}"
    );
}
