//! GPU buffers with stable ids, and a pool that recycles activation buffers.
//!
//! Every op allocates its output; without recycling, one decoding step would create hundreds of
//! buffers. Freed tensors return their buffer to a free list keyed by a size bucket (four buckets
//! per power of two, so at most 25% is wasted), and the next allocation of that bucket reuses it.
//! Reuse inside one pending command encoder is safe: WebGPU orders the commands of an encoder as if
//! they ran one after another. Host data never goes straight into a pooled buffer with
//! `queue.write_buffer` (that would land before earlier recorded commands run); uploads are copies
//! recorded in the encoder (see `encoder`).
//!
//! Ids key the bind-group cache; when a buffer is really destroyed its id goes to the graveyard so
//! the cache can drop bind groups that would otherwise keep its memory alive.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Ids of destroyed buffers not yet purged from the bind-group cache.
pub type Graveyard = Rc<RefCell<Vec<u64>>>;

/// A buffer with an id that is never reused.
#[derive(Debug)]
pub struct GpuBuf {
    pub id: u64,
    pub buffer: wgpu::Buffer,
    graveyard: Graveyard,
}

impl GpuBuf {
    pub fn new(buffer: wgpu::Buffer, graveyard: &Graveyard) -> Self {
        GpuBuf {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            buffer,
            graveyard: graveyard.clone(),
        }
    }
    pub fn size(&self) -> u64 {
        self.buffer.size()
    }
}

impl Drop for GpuBuf {
    fn drop(&mut self) {
        if let Ok(mut g) = self.graveyard.try_borrow_mut() {
            g.push(self.id);
        }
    }
}

/// Usage of every pooled buffer: bound as storage, copied from (slices, reads) and to (uploads).
pub const POOL_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// The size class of an allocation of `bytes`: at least 256, then four classes per power of two.
pub fn bucket(bytes: u64) -> u64 {
    if bytes <= 256 {
        return 256;
    }
    let step = bytes.next_power_of_two() / 8;
    bytes.div_ceil(step) * step
}

pub struct Pool {
    device: wgpu::Device,
    graveyard: Graveyard,
    free: HashMap<u64, Vec<GpuBuf>>,
    /// Bytes held by buffers this pool created (in use or free).
    pub allocated: u64,
}

impl Pool {
    pub fn new(device: wgpu::Device, graveyard: Graveyard) -> Rc<RefCell<Pool>> {
        Rc::new(RefCell::new(Pool {
            device,
            graveyard,
            free: HashMap::new(),
            allocated: 0,
        }))
    }

    fn take(&mut self, bytes: u64) -> GpuBuf {
        let size = bucket(bytes);
        if let Some(b) = self.free.get_mut(&size).and_then(Vec::pop) {
            return b;
        }
        self.allocated += size;
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("pool"),
            size,
            usage: POOL_USAGE,
            mapped_at_creation: false,
        });
        GpuBuf::new(buffer, &self.graveyard)
    }

    fn give_back(&mut self, b: GpuBuf) {
        self.free.entry(b.size()).or_default().push(b);
    }

    /// Destroy the free buffers (those in use stay).
    pub fn trim(&mut self) {
        for (size, bufs) in self.free.drain() {
            self.allocated -= size * bufs.len() as u64;
        }
    }
}

/// A pooled buffer on loan; returns to the pool when dropped.
#[derive(Debug)]
pub struct PoolBuf {
    buf: Option<GpuBuf>,
    pool: Weak<RefCell<Pool>>,
}

impl PoolBuf {
    /// A buffer of at least `bytes` bytes (contents undefined).
    pub fn alloc(pool: &Rc<RefCell<Pool>>, bytes: u64) -> PoolBuf {
        let buf = pool.borrow_mut().take(bytes);
        PoolBuf {
            buf: Some(buf),
            pool: Rc::downgrade(pool),
        }
    }

    pub fn get(&self) -> &GpuBuf {
        // Only `drop` takes the buffer out.
        self.buf
            .as_ref()
            .unwrap_or_else(|| unreachable!("pooled buffer used after drop"))
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        let (Some(b), Some(pool)) = (self.buf.take(), self.pool.upgrade()) else {
            return;
        };
        // If the pool is busy (it never is when tensors are dropped), the buffer is simply freed.
        let Ok(mut p) = pool.try_borrow_mut() else {
            return;
        };
        p.give_back(b);
    }
}

#[cfg(test)]
mod tests {
    use super::bucket;

    #[test]
    fn buckets_waste_at_most_a_quarter() {
        assert_eq!(bucket(1), 256);
        assert_eq!(bucket(256), 256);
        assert_eq!(bucket(257), 320);
        assert_eq!(bucket(1024), 1024);
        assert_eq!(bucket(1025), 1280);
        for bytes in [300u64, 1000, 4097, 65_537, 3_000_000, 100 << 20] {
            let b = bucket(bytes);
            assert!(b >= bytes && (b - bytes) * 4 <= b, "{bytes} -> {b}");
        }
        // Sizes inside one bucket share it.
        assert_eq!(bucket(4097), bucket(5000));
    }
}
