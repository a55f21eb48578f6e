//! Fuzz the OCTF decoders (octree and omnitree): no input may panic; whatever decodes
//! must re-encode canonically.
//! Trees are compared through their encodings (bit-exact, so NaN payloads compare equal).
#![no_main]

use libfuzzer_sys::fuzz_target;
use octformer_core::format::{
    ChildOrder, DecodeOptions, EncodeOptions, decode_octree, encode_octree,
};
use octformer_core::omnitree::Omnitree;

fuzz_target!(|data: &[u8]| {
    // with checksums: the path users take
    let checked = decode_octree(data, &DecodeOptions::default());
    // without checksums the fuzzer reaches the structural checks behind the CRCs
    let unchecked = decode_octree(
        data,
        &DecodeOptions {
            max_depth: None,
            verify_checksums: false,
        },
    );
    assert!(
        checked.is_err() || unchecked.is_ok(),
        "checksums only ever reject more"
    );
    if let Ok(t) = unchecked {
        let order = if data.len() > 20 && data[20] == 1 {
            ChildOrder::XyzLsb
        } else {
            ChildOrder::XyzMsb
        };
        let opts = EncodeOptions { child_order: order };
        let bytes = encode_octree(&t.view(), opts).expect("a decoded tree is valid");
        let again =
            decode_octree(&bytes, &DecodeOptions::default()).expect("re-encoded bytes decode");
        assert_eq!(
            encode_octree(&again.view(), opts).expect("valid"),
            bytes,
            "decode(encode(t)) == t"
        );
        if checked.is_ok() {
            assert_eq!(bytes.as_slice(), data, "encode(decode(b)) == b");
        }
    }
    let unchecked_opts = DecodeOptions {
        max_depth: None,
        verify_checksums: false,
    };
    if let Ok(t) = Omnitree::decode(data, &unchecked_opts) {
        let bytes = t.encode();
        let again = Omnitree::decode(&bytes, &DecodeOptions::default())
            .expect("re-encoded omnitree decodes");
        assert_eq!(again.encode(), bytes);
        if Omnitree::decode(data, &DecodeOptions::default()).is_ok() {
            assert_eq!(bytes.as_slice(), data, "omnitree encode(decode(b)) == b");
        }
        let q: Vec<i64> = data.iter().take(8).map(|&b| b as i64 - 8).collect();
        let q = &q[..q.len() / t.dims as usize * t.dims as usize];
        let _ = t.locate_cells(q);
        let _ = t.leaf_cells();
    }
    for k in 0..3u8 {
        let _ = decode_octree(
            data,
            &DecodeOptions {
                max_depth: Some(k),
                verify_checksums: false,
            },
        );
    }
});
