//! Bad input through `spec-llava caption`: every case exits with code 2 and one line on stderr
//! that names the offending file and says what is wrong — never a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn good_image() -> PathBuf {
    fixture("clip-llama-gqa-f32").join("images/square32.png")
}

/// A scratch copy of the f32 fixture that a test may corrupt.
fn scratch_checkpoint(tag: &str) -> PathBuf {
    let dst = std::env::temp_dir().join(format!("spec-llava-bad-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(fixture("clip-llama-gqa-f32")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
        }
    }
    dst
}

/// Run caption; return (exit code, stderr).
fn caption(model: &Path, image: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spec-llava"))
        .args(["caption", "--max-new-tokens", "2", "--model"])
        .arg(model)
        .arg("--image")
        .arg(image)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Exit 2, a single line, naming `file` and containing `what`.
fn assert_refused(model: &Path, image: &Path, file: &str, what: &str) {
    let (code, stderr) = caption(model, image);
    assert_eq!(code, 2, "expected exit 2, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line expected: {stderr}"
    );
    assert!(stderr.contains(file), "stderr should name {file}: {stderr}");
    assert!(
        stderr.to_lowercase().contains(&what.to_lowercase()),
        "stderr should say {what}: {stderr}"
    );
}

fn write_safetensors(path: &Path, header: &str, data: &[u8]) {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn corrupt_safetensors_are_refused_by_name() {
    let dir = scratch_checkpoint("st");
    let weights = dir.join("model.safetensors");
    let original = std::fs::read(&weights).unwrap();
    type Corruption<'a> = (&'static str, Box<dyn Fn() + 'a>);
    let cases: Vec<Corruption> = vec![
        (
            "header",
            Box::new(|| std::fs::write(&weights, 1_000_000u64.to_le_bytes()).unwrap()),
        ),
        (
            "not a valid safetensors",
            Box::new(|| write_safetensors(&weights, "{not json", &[])),
        ),
        (
            "not a valid safetensors",
            Box::new(|| {
                write_safetensors(
                    &weights,
                    r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                    &[0; 8],
                )
            }),
        ),
        (
            "not a valid safetensors",
            Box::new(|| {
                let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
                write_safetensors(&weights, h, &[0; 12])
            }),
        ),
        (
            "not a valid safetensors",
            Box::new(|| std::fs::write(&weights, &original[..original.len() / 2]).unwrap()),
        ),
        (
            "not a valid safetensors",
            Box::new(|| std::fs::write(&weights, b"").unwrap()),
        ),
        (
            "missing tensor",
            Box::new(|| {
                write_safetensors(
                    &weights,
                    r#"{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                    &[0; 4],
                )
            }),
        ),
    ];
    for (what, corrupt) in cases {
        corrupt();
        assert_refused(&dir, &good_image(), "model.safetensors", what);
    }
}

#[test]
fn shapes_that_disagree_with_config_are_refused() {
    let dir = scratch_checkpoint("shape");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&config).unwrap();
    v["text_config"]["intermediate_size"] = 100.into();
    std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
    assert_refused(
        &dir,
        &good_image(),
        "model.safetensors",
        "but config.json implies",
    );
}

#[test]
fn unknown_model_type_and_bad_config_are_refused() {
    let dir = scratch_checkpoint("cfg");
    std::fs::write(dir.join("config.json"), r#"{"model_type": "blip-2"}"#).unwrap();
    assert_refused(
        &dir,
        &good_image(),
        "config.json",
        "unsupported model_type \"blip-2\"",
    );
    std::fs::write(dir.join("config.json"), "{]").unwrap();
    assert_refused(&dir, &good_image(), "config.json", "invalid JSON");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert_refused(&dir, &good_image(), "config.json", "no such file");
}

#[test]
fn missing_image_processor_config_is_refused() {
    // The image processor comes from preprocessor_config.json (4.x) or, when that is absent, from
    // processor_config.json's `image_processor` (5.x); the 4.x fixture's processor_config.json has
    // none, so removing the first file leaves no image processor.
    let dir = scratch_checkpoint("proc");
    std::fs::remove_file(dir.join("preprocessor_config.json")).unwrap();
    assert_refused(
        &dir,
        &good_image(),
        "preprocessor_config.json",
        "no such file, and processor_config.json has no image_processor",
    );
    // A 5.x-style nested one is read instead, and checked like the file.
    let nested = r#"{"image_token": "<image>", "patch_size": 8, "image_processor": {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 32}, "crop_size": {"height": 24, "width": 24}}}"#;
    std::fs::write(dir.join("processor_config.json"), nested).unwrap();
    assert_refused(
        &dir,
        &good_image(),
        "processor_config.json (image_processor)",
        "produces 24x24 images, but the vision tower expects 32x32",
    );
}

#[test]
fn tokenizer_without_image_token_is_refused() {
    let dir = scratch_checkpoint("tok");
    let tok = std::fs::read_to_string(dir.join("tokenizer.json")).unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        tok.replace("<image>", "<picture>"),
    )
    .unwrap();
    for f in ["tokenizer_config.json", "special_tokens_map.json"] {
        if let Ok(t) = std::fs::read_to_string(dir.join(f)) {
            std::fs::write(dir.join(f), t.replace("<image>", "<picture>")).unwrap();
        }
    }
    assert_refused(&dir, &good_image(), "tokenizer.json", "<image>");
}

#[test]
fn bad_images_are_refused_by_name() {
    let model = fixture("clip-llama-gqa-f32");
    let tmp = std::env::temp_dir().join(format!("spec-llava-bad-images-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let png = std::fs::read(good_image()).unwrap();
    // A PNG header declaring 100000 x 100000 pixels: must be refused before any decoding.
    let mut bomb = png[..33].to_vec();
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.png", vec![]),
        ("truncated.png", png[..png.len() / 2].to_vec()),
        (
            "random.jpg",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
        ),
        (
            "drawing.svg",
            br#"<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>"#.to_vec(),
        ),
        ("bomb.png", bomb),
    ];
    for (name, bytes) in cases {
        let path = tmp.join(name);
        std::fs::write(&path, bytes).unwrap();
        let (code, stderr) = caption(&model, &path);
        assert_eq!(code, 2, "{name}: {stderr}");
        assert!(
            stderr.contains(name) && !stderr.contains("panicked"),
            "{name}: {stderr}"
        );
        assert_eq!(stderr.trim_end().lines().count(), 1, "{name}: {stderr}");
    }
    let (code, stderr) = caption(&model, &tmp.join("missing.png"));
    assert_eq!(code, 2);
    assert!(stderr.contains("missing.png"), "{stderr}");
}

#[test]
fn bad_options_exit_2() {
    let model = fixture("clip-llama-gqa-f32");
    let out = Command::new(env!("CARGO_BIN_EXE_spec-llava"))
        .args(["caption", "--temperature=-1", "--model"])
        .arg(&model)
        .arg("--image")
        .arg(good_image())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("temperature"));
}
