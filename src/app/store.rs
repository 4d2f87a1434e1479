//! Where downloaded weights are kept: the origin-private file system (OPFS), one folder per
//! checkpoint URL, written chunk by chunk through a synchronous access handle (dedicated workers
//! only) so a shard never sits whole in the wasm heap. A file counts as kept once its marker
//! `<name>.complete` exists; a file without one is a partial download that the next load resumes.

use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    FileSystemDirectoryHandle, FileSystemFileHandle, FileSystemGetDirectoryOptions,
    FileSystemGetFileOptions, FileSystemReadWriteOptions, FileSystemSyncAccessHandle,
};

use crate::app::fetch::js_text;

/// The top folder of the store.
const ROOT: &str = "spec-llava-models";
const COMPLETE: &str = ".complete";

/// Why the store refused (quota, permissions, no OPFS): loading goes on without keeping the file.
#[derive(Debug, Clone)]
pub struct StoreError(pub String);

impl From<JsValue> for StoreError {
    fn from(e: JsValue) -> Self {
        let name = e
            .dyn_ref::<js_sys::Error>()
            .map(|e| String::from(e.name()))
            .unwrap_or_default();
        if name == "QuotaExceededError" {
            return StoreError("the browser's storage quota is full".into());
        }
        StoreError(format!("storage: {}", js_text(&e)))
    }
}

/// Why a file was not kept: the store refused (the caller goes on without keeping it), or the
/// work itself failed (the load stops).
pub enum KeepError {
    Store(StoreError),
    Fail(crate::error::Error),
}

impl From<StoreError> for KeepError {
    fn from(e: StoreError) -> Self {
        KeepError::Store(e)
    }
}

impl From<crate::error::Error> for KeepError {
    fn from(e: crate::error::Error) -> Self {
        KeepError::Fail(e)
    }
}

/// The folder of one checkpoint URL.
pub struct ModelStore {
    dir: FileSystemDirectoryHandle,
}

/// A folder name for a checkpoint URL: readable, unique (a hash of the whole URL), short.
fn folder_name(base: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in base.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let readable: String = base
        .chars()
        .rev()
        .take(60)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{readable}-{h:016x}")
}

async fn subdir(
    parent: &FileSystemDirectoryHandle,
    name: &str,
) -> Result<FileSystemDirectoryHandle, StoreError> {
    let opts = FileSystemGetDirectoryOptions::new();
    opts.set_create(true);
    let dir = JsFuture::from(parent.get_directory_handle_with_options(name, &opts)).await?;
    Ok(dir.unchecked_into())
}

impl ModelStore {
    /// The store folder for `base`; `None` where the browser has no OPFS.
    pub async fn open(base: &str) -> Option<ModelStore> {
        let nav: web_sys::WorkerNavigator =
            js_sys::Reflect::get(&js_sys::global(), &"navigator".into())
                .ok()?
                .dyn_into()
                .ok()?;
        let root = JsFuture::from(nav.storage().get_directory()).await.ok()?;
        let root: FileSystemDirectoryHandle = root.dyn_into().ok()?;
        let top = subdir(&root, ROOT).await.ok()?;
        let dir = subdir(&top, &folder_name(base)).await.ok()?;
        Some(ModelStore { dir })
    }

    async fn file_handle(
        &self,
        name: &str,
        create: bool,
    ) -> Result<FileSystemFileHandle, StoreError> {
        let opts = FileSystemGetFileOptions::new();
        opts.set_create(create);
        let h = JsFuture::from(self.dir.get_file_handle_with_options(name, &opts)).await?;
        Ok(h.unchecked_into())
    }

    async fn file(&self, name: &str) -> Result<web_sys::File, StoreError> {
        let handle = self.file_handle(name, false).await?;
        Ok(JsFuture::from(handle.get_file()).await?.unchecked_into())
    }

    /// The kept file `name`, when its download finished.
    pub async fn complete(&self, name: &str) -> Option<web_sys::File> {
        self.file_handle(&format!("{name}{COMPLETE}"), false)
            .await
            .ok()?;
        self.file(name).await.ok()
    }

    /// Bytes of a partial download (0 when none).
    pub async fn partial_len(&self, name: &str) -> u64 {
        self.file(name).await.map(|f| f.size() as u64).unwrap_or(0)
    }

    /// A writer appending to `name` (created empty, or holding a partial download).
    pub async fn writer(&self, name: &str) -> Result<Writer, StoreError> {
        let handle = self.file_handle(name, true).await?;
        let access = JsFuture::from(handle.create_sync_access_handle()).await?;
        Ok(Writer {
            access: access.unchecked_into(),
        })
    }

    /// The file `name` as it is now, complete or not.
    pub async fn unfinished(&self, name: &str) -> Result<web_sys::File, StoreError> {
        self.file(name).await
    }

    /// Mark `name` complete; the finished file.
    pub async fn finish(&self, name: &str) -> Result<web_sys::File, StoreError> {
        self.file_handle(&format!("{name}{COMPLETE}"), true).await?;
        self.file(name).await
    }

    /// Forget `name` (and its marker).
    pub async fn remove(&self, name: &str) -> Result<(), StoreError> {
        let _ = JsFuture::from(self.dir.remove_entry(&format!("{name}{COMPLETE}"))).await;
        JsFuture::from(self.dir.remove_entry(name)).await?;
        Ok(())
    }

    /// Write `bytes` as the whole of `name` and mark it complete.
    pub async fn put(&self, name: &str, bytes: &[u8]) -> Result<web_sys::File, StoreError> {
        let _ = self.remove(name).await;
        let mut writer = self.writer(name).await?;
        let written = writer.truncate(0).and_then(|()| writer.append(bytes));
        writer.close();
        self.settle(name, written).await
    }

    /// After writing `name`: mark it complete, or forget what was written when writing failed.
    async fn settle(
        &self,
        name: &str,
        written: Result<(), StoreError>,
    ) -> Result<web_sys::File, StoreError> {
        match written {
            Ok(()) => self.finish(name).await,
            Err(e) => {
                let _ = self.remove(name).await;
                Err(e)
            }
        }
    }

    /// The bytes of the complete (small) file `name`.
    pub async fn read_complete(&self, name: &str) -> Option<Vec<u8>> {
        let file = self.complete(name).await?;
        let buffer = JsFuture::from(file.array_buffer()).await.ok()?;
        Some(js_sys::Uint8Array::new(&buffer).to_vec())
    }

    /// Copy a picked file into the store as `name`, a slice at a time, reporting bytes; the
    /// kept copy.
    pub async fn keep(
        &self,
        name: &str,
        source: &web_sys::File,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<web_sys::File, StoreError> {
        let _ = self.remove(name).await;
        let mut writer = self.writer(name).await?;
        let total = source.size() as u64;
        let reader = web_sys::FileReaderSync::new()?;
        let mut at = 0u64;
        let result = loop {
            if at >= total {
                break Ok(());
            }
            let end = (at + (8 << 20)).min(total);
            let part = source.slice_with_f64_and_f64(at as f64, end as f64)?;
            let buffer = reader.read_as_array_buffer(&part)?;
            if let Err(e) = writer.append(&js_sys::Uint8Array::new(&buffer).to_vec()) {
                break Err(e);
            }
            at = end;
            progress(at, total);
        };
        writer.close();
        self.settle(name, result).await
    }
}

/// Appends to one store file (holds its exclusive access handle until `close`).
pub struct Writer {
    access: FileSystemSyncAccessHandle,
}

impl Writer {
    pub fn len(&self) -> Result<u64, StoreError> {
        Ok(self.access.get_size()? as u64)
    }

    pub fn truncate(&mut self, size: u64) -> Result<(), StoreError> {
        self.access.truncate_with_f64(size as f64)?;
        Ok(())
    }

    pub fn append(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let at = self.len()?;
        let opts = FileSystemReadWriteOptions::new();
        opts.set_at(at as f64);
        let written = self.access.write_with_u8_array_and_options(bytes, &opts)?;
        if (written as usize) < bytes.len() {
            return Err(StoreError("the browser's storage quota is full".into()));
        }
        Ok(())
    }

    /// Flush and release the file (others may open it again).
    pub fn close(&mut self) {
        let _ = self.access.flush();
        self.access.close();
    }
}
