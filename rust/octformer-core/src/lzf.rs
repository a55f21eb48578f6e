//! LZF decompression (PCD `binary_compressed` payloads), checked against every overrun.

use crate::error::{CoreError, Result};

fn corrupt(detail: String) -> CoreError {
    CoreError::Corrupt {
        what: "LZF",
        detail,
    }
}

/// Decode an LZF stream that must expand to exactly `size` bytes.
pub fn decompress(src: &[u8], size: usize) -> Result<Vec<u8>> {
    let n = src.len();
    // one 3-byte back-reference expands to at most 264 bytes: refuse absurd sizes before allocating
    if size > 88 * n.max(1) {
        return Err(corrupt(format!(
            "{n} compressed bytes cannot expand to the announced {size} bytes"
        )));
    }
    let mut out = vec![0u8; size];
    let (mut ip, mut op) = (0usize, 0usize);
    while ip < n {
        let ctrl = src[ip] as usize;
        ip += 1;
        if ctrl < 32 {
            let len = ctrl + 1;
            if ip + len > n {
                return Err(corrupt(format!(
                    "literal run of {len} bytes at input offset {} passes the end of the stream",
                    ip - 1
                )));
            }
            if op + len > size {
                return Err(corrupt(format!(
                    "output exceeds the announced {size} bytes"
                )));
            }
            out[op..op + len].copy_from_slice(&src[ip..ip + len]);
            ip += len;
            op += len;
        } else {
            let mut len = ctrl >> 5;
            if len == 7 {
                let Some(&extra) = src.get(ip) else {
                    return Err(corrupt("the stream ends inside a back-reference".into()));
                };
                len += extra as usize;
                ip += 1;
            }
            let Some(&low) = src.get(ip) else {
                return Err(corrupt("the stream ends inside a back-reference".into()));
            };
            ip += 1;
            let back = ((ctrl & 0x1f) << 8) + low as usize + 1;
            len += 2;
            if back > op {
                return Err(corrupt(format!(
                    "back-reference before the start of the output at input offset {ip}"
                )));
            }
            if op + len > size {
                return Err(corrupt(format!(
                    "output exceeds the announced {size} bytes"
                )));
            }
            let from = op - back;
            if back >= len {
                out.copy_within(from..from + len, op);
            } else {
                // overlapping reference: a repeated pattern, copied byte by byte forwards
                for i in 0..len {
                    out[op + i] = out[from + i];
                }
            }
            op += len;
        }
    }
    if op != size {
        return Err(corrupt(format!(
            "stream expands to {op} bytes, expected {size}"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Tiny reference compressor: literal runs plus greedy back-references within 8 KiB.
    fn compress(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut lit: Vec<u8> = Vec::new();
        let flush = |lit: &mut Vec<u8>, out: &mut Vec<u8>| {
            for chunk in lit.chunks(32) {
                out.push((chunk.len() - 1) as u8);
                out.extend_from_slice(chunk);
            }
            lit.clear();
        };
        let mut i = 0;
        while i < data.len() {
            let mut best = (0usize, 0usize);
            for back in 1..=(i.min(8192)) {
                let mut l = 0;
                while i + l < data.len() && l < 264 && data[i + l] == data[i - back + l] {
                    l += 1;
                }
                if l > best.0 {
                    best = (l, back);
                }
            }
            if best.0 >= 3 {
                flush(&mut lit, &mut out);
                let (l, back) = (best.0 - 2, best.1 - 1);
                if l < 7 {
                    out.push(((l << 5) | (back >> 8)) as u8);
                } else {
                    out.push(((7 << 5) | (back >> 8)) as u8);
                    out.push((l - 7) as u8);
                }
                out.push((back & 0xff) as u8);
                i += best.0;
            } else {
                lit.push(data[i]);
                i += 1;
            }
        }
        flush(&mut lit, &mut out);
        out
    }

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(0u8..4, 0..600)) {
            let c = compress(&data);
            prop_assert_eq!(decompress(&c, data.len()).unwrap(), data);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200), size in 0usize..2000) {
            let _ = decompress(&data, size);
        }
    }
}
