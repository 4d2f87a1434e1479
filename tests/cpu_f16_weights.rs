//! The CPU engine keeps an f16 checkpoint's big matrices as f16 where its tiles widen f16 in
//! registers (half the memory, half the bytes a one-token pass reads), holding exactly the
//! stored values; vectors (norms) arrive as f32 as before.

use std::path::Path;

use spec_llava::backend::cpu::{tile, CpuBackend};
use spec_llava::checkpoint::Checkpoint;
use spec_llava::nn::Weights;

#[test]
fn an_f16_checkpoints_matrices_stay_f16_on_the_cpu_engine_with_the_stored_values() {
    let ck = Checkpoint::open(Path::new("web/models/demo/target")).expect("the demo target");
    let w = Weights::new(&CpuBackend, &ck.weights, "language_model.model.layers.0.");
    for (name, shape) in [
        ("self_attn.q_proj.weight", vec![256, 256]),
        ("mlp.down_proj.weight", vec![256, 688]),
        ("input_layernorm.weight", vec![256]),
    ] {
        let got = w.get(name, &shape).expect("a weight");
        let stored = ck
            .weights
            .f32(&w.name(name), &shape)
            .expect("its stored values");
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got.values()), bits(&stored), "{name}");
        let kept_f16 = got.keeps_f16();
        let matrix = shape.len() == 2;
        assert_eq!(kept_f16, matrix && tile::f16_in_registers(), "{name}");
        if kept_f16 {
            assert_eq!(got.stored_bytes(), 2 * stored.len(), "{name}");
        }
    }
}
