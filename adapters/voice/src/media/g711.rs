//! G.711 µ-law and A-law (ITU-T G.711) conversion to and from 16-bit linear PCM.

use std::sync::OnceLock;

const BIAS: i32 = 0x84;
const CLIP: i32 = 32635;

/// Encodes one linear sample as µ-law.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let exponent = (7 - (s.leading_zeros() as i32 - 17)).clamp(0, 7);
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

fn ulaw_to_linear_calc(code: u8) -> i16 {
    let u = !code;
    let exponent = i32::from((u >> 4) & 0x07);
    let mantissa = i32::from(u & 0x0f);
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    if u & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// Encodes one linear sample as A-law.
pub fn linear_to_alaw(sample: i16) -> u8 {
    let mut s = i32::from(sample) >> 3; // 13-bit magnitude domain
    let sign = if s >= 0 {
        0xd5u8
    } else {
        s = -s - 1;
        0x55u8
    };
    let s = s.min(0x0fff);
    let code = if s < 32 {
        (s >> 1) as u8
    } else {
        let exponent = (31 - (s as u32).leading_zeros() - 4) as i32; // 1..=7
        let mantissa = (s >> exponent) & 0x0f;
        ((exponent << 4) | mantissa) as u8
    };
    code ^ sign
}

fn alaw_to_linear_calc(code: u8) -> i16 {
    let a = code ^ 0x55;
    let exponent = i32::from((a >> 4) & 0x07);
    let mantissa = i32::from(a & 0x0f);
    let magnitude = if exponent == 0 { (mantissa << 4) + 8 } else { ((mantissa << 4) + 0x108) << (exponent - 1) };
    if a & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

fn tables() -> &'static ([i16; 256], [i16; 256]) {
    static TABLES: OnceLock<([i16; 256], [i16; 256])> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut u = [0i16; 256];
        let mut a = [0i16; 256];
        for i in 0..=255u8 {
            u[usize::from(i)] = ulaw_to_linear_calc(i);
            a[usize::from(i)] = alaw_to_linear_calc(i);
        }
        (u, a)
    })
}

/// Decodes one µ-law byte (table lookup).
pub fn ulaw_to_linear(code: u8) -> i16 {
    tables().0[usize::from(code)]
}

/// Decodes one A-law byte (table lookup).
pub fn alaw_to_linear(code: u8) -> i16 {
    tables().1[usize::from(code)]
}

/// Encodes samples with `codec`.
pub fn encode(codec: crate::sdp::Codec, samples: &[i16]) -> Vec<u8> {
    match codec {
        crate::sdp::Codec::Pcmu => samples.iter().map(|s| linear_to_ulaw(*s)).collect(),
        crate::sdp::Codec::Pcma => samples.iter().map(|s| linear_to_alaw(*s)).collect(),
    }
}

/// Decodes bytes with `codec`.
pub fn decode(codec: crate::sdp::Codec, bytes: &[u8]) -> Vec<i16> {
    match codec {
        crate::sdp::Codec::Pcmu => bytes.iter().map(|b| ulaw_to_linear(*b)).collect(),
        crate::sdp::Codec::Pcma => bytes.iter().map(|b| alaw_to_linear(*b)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_code_points() {
        assert_eq!(linear_to_ulaw(0), 0xff);
        assert_eq!(ulaw_to_linear(0xff), 0);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(linear_to_alaw(0), 0xd5);
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(alaw_to_linear(0x2a), -32256);
        assert_eq!(alaw_to_linear(0xaa), 32256);
    }

    #[test]
    fn every_code_round_trips() {
        for code in 0..=255u8 {
            let u = ulaw_to_linear(code);
            // µ-law has two codes for zero (0x7f and 0xff); both decode to 0.
            if code != 0x7f {
                assert_eq!(linear_to_ulaw(u), code, "ulaw {code:#x}");
            }
            assert_eq!(linear_to_alaw(alaw_to_linear(code)), code, "alaw {code:#x}");
        }
    }

    #[test]
    fn quantization_error_is_small_relative_to_signal() {
        for s in (-32768i32..=32767).step_by(97) {
            let s = s as i16;
            for (enc, dec) in [(linear_to_ulaw as fn(i16) -> u8, ulaw_to_linear as fn(u8) -> i16), (linear_to_alaw, alaw_to_linear)] {
                let back = i32::from(dec(enc(s)));
                let err = (back - i32::from(s)).abs();
                assert!(err <= (i32::from(s).abs() / 16).max(16) + 8, "{s} -> {back}");
            }
        }
    }
}
