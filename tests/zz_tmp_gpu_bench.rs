use spec_llava::backend::cpu::CpuBackend;
use spec_llava::backend::gpu::GpuBackend;
use spec_llava::backend::Backend;
use std::time::Instant;

fn bench<B: Backend>(b: &B, name: &str, n: usize, k: usize, m: usize) {
    let w = b.weight(
        (0..n * k).map(|i| ((i % 97) as f32) * 0.01).collect(),
        &[n, k],
    );
    let x = b.tensor((0..m * k).map(|i| ((i % 13) as f32) * 0.1).collect(), m, k);
    let _ = pollster::block_on(b.read(&b.linear(&x, &w, None)));
    let iters = 10;
    let t = Instant::now();
    let mut last = None;
    for _ in 0..iters {
        last = Some(b.linear(&x, &w, None));
    }
    let _ = pollster::block_on(b.read(last.as_ref().unwrap()));
    let s = t.elapsed().as_secs_f64() / iters as f64;
    println!(
        "{name} m={m} {n}x{k}: {:.2} ms, {:.2} GB/s weights, {:.2} GFLOP/s",
        s * 1e3,
        (n * k * 4) as f64 / s / 1e9,
        (2 * n * k * m) as f64 / s / 1e9
    );
}

#[test]
fn bench_linear() {
    let g = pollster::block_on(GpuBackend::new()).unwrap();
    for (n, k) in [(4096, 4096), (11008, 4096)] {
        bench(&g, "gpu", n, k, 1);
        bench(&CpuBackend, "cpu", n, k, 1);
    }
    bench(&g, "gpu", 4096, 4096, 16);
    bench(&CpuBackend, "cpu", 4096, 4096, 16);
    bench(&g, "gpu", 1024, 1024, 577);
    bench(&CpuBackend, "cpu", 1024, 1024, 577);
}
