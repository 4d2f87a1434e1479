//! The safetensors header of one file, read without the data: 8 bytes of little-endian header
//! length, a JSON object of `name -> {dtype, shape, data_offsets}` plus `__metadata__`, then the
//! tensors back to back. Checked as the `safetensors` crate checks it (offsets contiguous from 0,
//! each tensor's byte length equal to its shape times its dtype, the data ending exactly at the end
//! of the file), but with 64-bit offsets: the crate's `usize` offsets cannot describe a 5 GB shard
//! on wasm32, and reading only the header lets a shard be loaded one tensor at a time.

use std::collections::HashMap;

use super::file::WeightFile;

/// Largest header accepted (the `safetensors` crate's limit).
const MAX_HEADER: u64 = 100_000_000;

/// One tensor's place in its file (absolute byte offsets).
#[derive(Debug, Clone)]
pub struct TensorPlace {
    pub name: String,
    /// The safetensors dtype name (`F32`, `BF16`, `U8`, ...).
    pub dtype: String,
    pub shape: Vec<usize>,
    pub start: u64,
    pub end: u64,
}

/// What a file's header says.
#[derive(Debug, Clone, Default)]
pub struct Header {
    pub metadata: HashMap<String, String>,
    pub tensors: Vec<TensorPlace>,
}

/// Bytes per element of a safetensors dtype name (`None`: not a dtype safetensors defines).
fn dtype_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" => 64,
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        _ => return None,
    })
}

/// Read and check the header of `file`; errors are the reason only (the caller adds the file).
pub fn read_header(file: &dyn WeightFile) -> Result<Header, String> {
    let len = file.len();
    if len < 8 {
        return Err(format!(
            "{len} bytes: too short for a header (8-byte length first)"
        ));
    }
    let n = u64::from_le_bytes(
        file.read(0, 8)?
            .as_ref()
            .try_into()
            .map_err(|_| "cannot read the header length".to_string())?,
    );
    if n > MAX_HEADER {
        return Err(format!(
            "the header claims {n} bytes (at most {MAX_HEADER})"
        ));
    }
    if 8 + n > len {
        return Err(format!(
            "the header claims {n} bytes but the file has {len}: the file is truncated or not safetensors"
        ));
    }
    let bytes = file.read(8, 8 + n)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| "the header is not UTF-8".to_string())?;
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| format!("the header is not a JSON object: {e}"))?;
    let mut header = Header::default();
    for (name, value) in json {
        if name == "__metadata__" {
            header.metadata = serde_json::from_value(value)
                .map_err(|e| format!("__metadata__ is not a map of strings: {e}"))?;
            continue;
        }
        header.tensors.push(tensor_place(&name, value, 8 + n)?);
    }
    header.tensors.sort_by_key(|t| (t.start, t.end));
    let mut at = 8 + n;
    for t in &header.tensors {
        if t.start != at {
            return Err(format!(
                "tensor {} starts at data offset {} where {} was expected (tensors must follow each other)",
                t.name,
                t.start - 8 - n,
                at - 8 - n
            ));
        }
        at = t.end;
    }
    if at != len {
        return Err(format!(
            "the tensors end at byte {at} but the file has {len} bytes (truncated or padded)"
        ));
    }
    Ok(header)
}

#[derive(serde::Deserialize)]
struct RawInfo {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// One header entry, checked: known dtype, byte length = elements x dtype size.
fn tensor_place(name: &str, value: serde_json::Value, base: u64) -> Result<TensorPlace, String> {
    let info: RawInfo = serde_json::from_value(value)
        .map_err(|e| format!("tensor {name}: invalid header entry: {e}"))?;
    let bits = dtype_bits(&info.dtype)
        .ok_or_else(|| format!("tensor {name}: unknown dtype {}", info.dtype))?;
    let [s, e] = info.data_offsets;
    let elements = info
        .shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("tensor {name}: shape {:?} overflows", info.shape))?;
    let size = elements
        .checked_mul(bits)
        .map(|b| b.div_ceil(8))
        .ok_or_else(|| format!("tensor {name}: shape {:?} overflows", info.shape))?;
    if e < s || e - s != size {
        return Err(format!(
            "tensor {name}: data_offsets [{s}, {e}] hold {} bytes, but {} {:?} needs {size}",
            e.saturating_sub(s),
            info.dtype,
            info.shape
        ));
    }
    let shape = info
        .shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("tensor {name}: shape {:?} too large", info.shape))?;
    Ok(TensorPlace {
        name: name.to_string(),
        dtype: info.dtype,
        shape,
        start: base.checked_add(s).ok_or("offset overflow")?,
        end: base.checked_add(e).ok_or("offset overflow")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut f = (header.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(header.as_bytes());
        f.resize(f.len() + data, 0);
        f
    }

    #[test]
    fn a_well_formed_header_gives_absolute_places() {
        let h = r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F16","shape":[2],"data_offsets":[8,12]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let f = file(h, 12);
        let header = read_header(&f).unwrap();
        assert_eq!(header.metadata["format"], "pt");
        let base = 8 + h.len() as u64;
        let names: Vec<_> = header
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.start - base, t.end - base))
            .collect();
        assert_eq!(names, vec![("a", 0, 8), ("b", 8, 12)]);
    }

    #[test]
    fn offsets_past_4_gib_parse() {
        // A 5 GB shard's offsets: valid even where usize is 32 bits (the check only needs the
        // file length, so a fake length stands in for the data).
        struct Big(Vec<u8>, u64);
        impl WeightFile for Big {
            fn len(&self) -> u64 {
                self.1
            }
            fn read(&self, s: u64, e: u64) -> Result<std::borrow::Cow<'_, [u8]>, String> {
                Ok(std::borrow::Cow::Borrowed(&self.0[s as usize..e as usize]))
            }
        }
        let h = r#"{"w":{"dtype":"U8","shape":[5000000000],"data_offsets":[0,5000000000]}}"#;
        let f = file(h, 0);
        let len = f.len() as u64 + 5_000_000_000;
        let header = read_header(&Big(f, len)).unwrap();
        assert_eq!(header.tensors[0].end, len);
    }

    #[test]
    fn bad_headers_say_what_is_wrong() {
        let cases = [
            (
                file(
                    r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                    8,
                ),
                "the tensors end at byte",
            ),
            (
                file(
                    r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                    12,
                ),
                "tensor b starts at data offset 4",
            ),
            (
                file(
                    r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                    8,
                ),
                "needs 12",
            ),
            (
                file(
                    r#"{"a":{"dtype":"Q9","shape":[1],"data_offsets":[0,1]}}"#,
                    1,
                ),
                "unknown dtype Q9",
            ),
            (file("{not json", 0), "not a JSON object"),
            (1_000_000u64.to_le_bytes().to_vec(), "header claims"),
            (vec![1, 2, 3], "too short"),
        ];
        for (f, want) in cases {
            let err = read_header(&f).unwrap_err();
            assert!(err.contains(want), "{err} (wanted {want})");
        }
    }
}
