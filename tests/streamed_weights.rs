//! Weights read a tensor at a time, as the page reads them (from a picked file, the
//! origin-private file system or HTTP ranges): no read is bigger than one tensor, the whole file is
//! never read at once, a file that fails mid-load is named and leaves the session as it was, and
//! quantize-while-loading gives the same model as `caption --quant`.

mod common;

use common::demo;

use std::borrow::Cow;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use spec_llava::app::messages::{ModelRole, QuantChoice};
use spec_llava::app::session::Session;
use spec_llava::backend::cpu::CpuBackend;
use spec_llava::files::MemoryFiles;
use spec_llava::weights::{read_header, WeightFile};

/// A file read by range that records its biggest read and can be made to fail after some bytes.
struct RangeOnly {
    bytes: Vec<u8>,
    largest_read: AtomicU64,
    read_total: AtomicU64,
    fail_after: Option<u64>,
}

impl WeightFile for RangeOnly {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn read(&self, start: u64, end: u64) -> Result<Cow<'_, [u8]>, String> {
        let total = self.read_total.fetch_add(end - start, Ordering::SeqCst) + (end - start);
        if self.fail_after.is_some_and(|limit| total > limit) {
            return Err("the connection was reset".into());
        }
        self.largest_read.fetch_max(end - start, Ordering::SeqCst);
        // Owned, as every browser source hands out bytes.
        Ok(Cow::Owned(
            self.bytes[start as usize..end as usize].to_vec(),
        ))
    }
}

/// The demo checkpoint with its weights behind a [`RangeOnly`] file.
fn ranged(dir: &Path, fail_after: Option<u64>) -> (MemoryFiles, Arc<RangeOnly>) {
    let mut m = MemoryFiles::new("https://example.org/demo");
    let mut weights = None;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.ends_with(".safetensors") {
            let file = Arc::new(RangeOnly {
                bytes: std::fs::read(&path).unwrap(),
                largest_read: AtomicU64::new(0),
                read_total: AtomicU64::new(0),
                fail_after,
            });
            m.insert_file(&name, file.clone());
            weights = Some(file);
        } else if path.is_file() {
            m.insert(&name, std::fs::read(&path).unwrap());
        }
    }
    (m, weights.unwrap())
}

fn caption(s: &mut Session<CpuBackend>) -> String {
    let png = spec_llava::scenes::png_bytes(&spec_llava::scenes::generate(5).image).unwrap();
    let settings = spec_llava::app::messages::Settings::default();
    let job = spec_llava::app::session::CaptionJob {
        run: 1,
        image_bytes: &png,
        image_name: "scene.png",
        mode: spec_llava::app::messages::RunMode::Plain,
        settings: &settings,
    };
    let out = pollster::block_on(s.caption(job, &|| false, &mut |_| {}));
    out.unwrap().text
}

#[test]
fn weights_are_read_a_tensor_at_a_time() {
    let (files, weights) = ranged(&demo("target"), None);
    let largest_tensor = read_header(weights.as_ref())
        .unwrap()
        .tensors
        .iter()
        .map(|t| t.end - t.start)
        .max()
        .unwrap();
    let mut s = Session::new(CpuBackend);
    s.load(ModelRole::Target, &files, files.total_bytes())
        .unwrap();
    let largest = weights.largest_read.load(Ordering::SeqCst);
    assert!(
        largest <= largest_tensor,
        "a read of {largest} bytes, but the largest tensor has {largest_tensor}"
    );
    assert!(
        largest < weights.len() / 4,
        "{largest} of {}",
        weights.len()
    );
    // Same caption as the same checkpoint read from disk.
    let mut from_disk = Session::new(CpuBackend);
    let dir = spec_llava::files::DirFiles(demo("target"));
    from_disk.load(ModelRole::Target, &dir, 0).unwrap();
    assert_eq!(caption(&mut s), caption(&mut from_disk));
}

#[test]
fn a_read_that_fails_mid_load_is_named_and_changes_nothing() {
    let mut s = Session::new(CpuBackend);
    let (good, _) = ranged(&demo("target"), None);
    s.load(ModelRole::Target, &good, 0).unwrap();
    let before = caption(&mut s);
    let models = s.models();
    let (bad, weights) = ranged(&demo("target"), Some(1 << 20));
    let err = s.load(ModelRole::Target, &bad, 0).unwrap_err().to_string();
    assert!(
        err.contains("https://example.org/demo/model.safetensors")
            && err.contains("connection was reset"),
        "{err}"
    );
    assert!(weights.read_total.load(Ordering::SeqCst) > 1 << 20);
    assert_eq!(s.models(), models);
    assert_eq!(caption(&mut s), before);
}

#[test]
fn quantize_while_loading_follows_the_choice() {
    let (files, _) = ranged(&demo("target"), None);
    for (choice, bytes, tag) in [
        (QuantChoice::Q4, 0, Some("q4 on load")),
        (QuantChoice::Q8, 0, Some("q8 on load")),
        (QuantChoice::AsStored, u64::MAX, None),
        // Auto: q4 only above 1 GiB of files.
        (QuantChoice::Auto, 10 << 20, None),
        (QuantChoice::Auto, 2 << 30, Some("q4 on load")),
    ] {
        let mut s = Session::new(CpuBackend);
        let (info, _) = s.load_as(ModelRole::Target, &files, bytes, choice).unwrap();
        match tag {
            Some(t) => assert!(info.summary.contains(t), "{choice:?}: {}", info.summary),
            None => assert!(
                !info.summary.contains("on load"),
                "{choice:?}: {}",
                info.summary
            ),
        }
        assert!(!caption(&mut s).is_empty());
    }
}
