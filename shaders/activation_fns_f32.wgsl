// Activation functions shared by activation_elementwise_f32.wgsl, gated_elementwise_f32.wgsl and
// the gated epilogue of matmul_vec.wgsl / matmul_small.wgsl (GATED). WGSL has no imports: the host
// prepends this file to those kernels, so every one of them evaluates the same expressions.
//
// `ACT` (pipeline-overridable) selects the function:
//   0 silu, 1 gelu (exact, erf), 2 gelu_tanh, 3 quick_gelu, 4 relu.
// Formulas follow the CPU reference (src/backend/cpu.rs `activation`) term for term.

override ACT: u32 = 0u;

// erf for f32: a port of FreeBSD's s_erff.c (as in Rust's libm `erff`, which the CPU reference
// uses), so both engines evaluate the same rational approximations. Max error vs libm < 1e-6.
fn erfc1_f32(x: f32) -> f32 {
    let s = abs(x) - 1.0;
    let pp = -2.3621185683e-03 + s * (4.1485610604e-01 + s * (-3.7220788002e-01 + s * (3.1834661961e-01
        + s * (-1.1089469492e-01 + s * (3.5478305072e-02 + s * -2.1663755178e-03)))));
    let qq = 1.0 + s * (1.0642088205e-01 + s * (5.4039794207e-01 + s * (7.1828655899e-02
        + s * (1.2617121637e-01 + s * (1.3637083583e-02 + s * 1.1984500103e-02)))));
    return 1.0 - 8.4506291151e-01 - pp / qq;
}

fn erfc2_f32(ix: u32, x_in: f32) -> f32 {
    if ix < 0x3fa00000u {
        // |x| < 1.25
        return erfc1_f32(x_in);
    }
    let x = abs(x_in);
    let s = 1.0 / (x * x);
    var r: f32;
    var big_s: f32;
    if ix < 0x4036db6du {
        // |x| < 1/0.35
        r = -9.8649440333e-03 + s * (-6.9385856390e-01 + s * (-1.0558626175e+01 + s * (-6.2375331879e+01
            + s * (-1.6239666748e+02 + s * (-1.8460508728e+02 + s * (-8.1287437439e+01 + s * -9.8143291473e+00))))));
        big_s = 1.0 + s * (1.9651271820e+01 + s * (1.3765776062e+02 + s * (4.3456588745e+02
            + s * (6.4538726807e+02 + s * (4.2900814819e+02 + s * (1.0863500214e+02
            + s * (6.5702495575e+00 + s * -6.0424413532e-02)))))));
    } else {
        // |x| >= 1/0.35
        r = -9.8649431020e-03 + s * (-7.9928326607e-01 + s * (-1.7757955551e+01 + s * (-1.6063638306e+02
            + s * (-6.3756646729e+02 + s * (-1.0250950928e+03 + s * -4.8351919556e+02)))));
        big_s = 1.0 + s * (3.0338060379e+01 + s * (3.2579251099e+02 + s * (1.5367296143e+03
            + s * (3.1998581543e+03 + s * (2.5530502930e+03 + s * (4.7452853394e+02 + s * -2.2440952301e+01))))));
    }
    // z = x with the low 13 mantissa bits cleared, so z*z is exact.
    let z = bitcast<f32>(bitcast<u32>(x) & 0xffffe000u);
    return exp(-z * z - 0.5625) * exp((z - x) * (z + x) + r / big_s) / x;
}

fn erf_f32(x: f32) -> f32 {
    let bits = bitcast<u32>(x);
    let negative = (bits >> 31u) == 1u;
    let ix = bits & 0x7fffffffu;
    if ix < 0x3f580000u {
        // |x| < 0.84375
        if ix < 0x31800000u {
            // |x| < 2**-28
            return 0.125 * (8.0 * x + 1.0270333290e+00 * x);
        }
        let z = x * x;
        let r = 1.2837916613e-01 + z * (-3.2504209876e-01 + z * (-2.8481749818e-02 + z * (-5.7702702470e-03
            + z * -2.3763017452e-05)));
        let s = 1.0 + z * (3.9791721106e-01 + z * (6.5022252500e-02 + z * (5.0813062117e-03
            + z * (1.3249473704e-04 + z * -3.9602282413e-06))));
        return x + x * (r / s);
    }
    var y = 1.0;
    if ix < 0x40c00000u {
        // |x| < 6 (beyond, erf is 1 in f32; this also covers infinities)
        y = 1.0 - erfc2_f32(ix, x);
    }
    return select(y, -y, negative);
}

fn activate(x: f32) -> f32 {
    switch ACT {
        case 0u: {
            return x / (1.0 + exp(-x));
        }
        case 1u: {
            return 0.5 * x * (1.0 + erf_f32(x / 1.4142135623730951));
        }
        case 2u: {
            // tanh saturates to +-1 in f32 well before |t| = 10; clamping avoids inf/inf.
            let t = clamp(0.7978845608028654 * (x + 0.044715 * x * x * x), -10.0, 10.0);
            return 0.5 * x * (1.0 + tanh(t));
        }
        case 3u: {
            return x / (1.0 + exp(-1.702 * x));
        }
        default: {
            return max(x, 0.0);
        }
    }
}
