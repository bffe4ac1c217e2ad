//! `hex8-modulo` is exactly the app's `parseInt(teamId.substring(0, 8), 16) % N`:
//! checked against a line-by-line transcription of the ECMAScript spec for
//! thousands of random UUIDs and edge strings (proptest), and against the
//! answers of a real JavaScript engine (`fixtures/hex8_node.json`, made by
//! `fixtures/hex8_node.js` with Node 20).

use dbtool_shard::hex8_modulo;
use proptest::prelude::*;

/// ECMAScript `parseInt(string, 16)` on `string.substring(0, 8)`, step by step
/// (ECMA-262 §19.2.5), in UTF-16 code units and f64 like the engine, then
/// `% n`. `None` where the app failed: NaN, or a negative index.
fn reference(team_id: &str, n: u32) -> Option<u32> {
    let units: Vec<u16> = team_id.encode_utf16().take(8).collect();
    let is_ws = |u: u16| {
        matches!(
            u,
            0x09 | 0x0B
                | 0x0C
                | 0xFEFF
                | 0x0A
                | 0x0D
                | 0x2028
                | 0x2029
                | 0x20
                | 0xA0
                | 0x1680
                | 0x2000..=0x200A | 0x202F | 0x205F | 0x3000
        )
    };
    // 2. TrimString(inputString, start)
    let mut s = &units[..];
    while let Some((&u, rest)) = s.split_first() {
        if !is_ws(u) {
            break;
        }
        s = rest;
    }
    // 3-5. sign
    let mut sign = 1.0f64;
    if s.first() == Some(&(b'-' as u16)) {
        sign = -1.0;
    }
    if matches!(s.first(), Some(&u) if u == b'+' as u16 || u == b'-' as u16) {
        s = &s[1..];
    }
    // 10. R = 16: strip a "0x" / "0X" prefix.
    if s.len() >= 2 && s[0] == b'0' as u16 && (s[1] == b'x' as u16 || s[1] == b'X' as u16) {
        s = &s[2..];
    }
    // 11-12. digits up to the first non-radix-16 code unit.
    let digit = |u: u16| {
        char::from_u32(u32::from(u)).and_then(|c| if c.is_ascii() { c.to_digit(16) } else { None })
    };
    let end = s
        .iter()
        .position(|&u| digit(u).is_none())
        .unwrap_or(s.len());
    let z = &s[..end];
    // 13. NaN
    if z.is_empty() {
        return None;
    }
    let math_int = z
        .iter()
        .fold(0f64, |acc, &u| acc * 16.0 + f64::from(digit(u).unwrap()));
    let value = sign * math_int;
    // JS `%` is truncating remainder with the dividend's sign, like f64 `%`.
    let index = value % f64::from(n);
    if index.is_nan() || index < 0.0 {
        return None;
    }
    Some(index as u32)
}

fn edge_string() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just(" ".to_string()),
        Just("\t".to_string()),
        Just("\u{a0}".to_string()),
        Just("\u{3000}".to_string()),
        Just("\u{feff}".to_string()),
        Just("\u{85}".to_string()),
        Just("\u{1F600}".to_string()),
        Just("-".to_string()),
        Just("+".to_string()),
        Just("0x".to_string()),
        Just("0X".to_string()),
        Just("g".to_string()),
        Just("é".to_string()),
        "[0-9a-fA-F]{1,4}",
    ];
    proptest::collection::vec(piece, 0..6).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn hex8_modulo_matches_the_spec_for_random_uuids(bits in any::<u128>(), n in 1u32..5000) {
        let id = uuid::Uuid::from_u128(bits).to_string();
        prop_assert_eq!(hex8_modulo(&id, n).ok(), reference(&id, n));
        let upper = id.to_uppercase();
        prop_assert_eq!(hex8_modulo(&upper, n).ok(), reference(&upper, n));
        // Every UUID routes: its first 8 characters are hex digits.
        prop_assert!(hex8_modulo(&id, n).is_ok());
    }

    #[test]
    fn hex8_modulo_matches_the_spec_for_edge_strings(id in edge_string(), n in 1u32..64) {
        prop_assert_eq!(hex8_modulo(&id, n).ok(), reference(&id, n), "id {:?}", id);
    }

    #[test]
    fn hex8_modulo_matches_the_spec_for_any_string(id in "\\PC{0,12}", n in 1u32..64) {
        prop_assert_eq!(hex8_modulo(&id, n).ok(), reference(&id, n), "id {:?}", id);
    }
}

#[test]
fn hex8_modulo_agrees_with_node_on_every_fixture_case() {
    let text = include_str!("fixtures/hex8_node.json");
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    let ns: Vec<u32> = v["ns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap() as u32)
        .collect();
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() > 300);
    for case in cases {
        let id = case["id"].as_str().unwrap();
        for (n, want) in ns.iter().zip(case["results"].as_array().unwrap()) {
            let want = want.as_u64().map(|w| w as u32);
            let got = hex8_modulo(id, *n);
            assert_eq!(
                got.as_ref().ok().copied(),
                want,
                "parseInt({id:?}.substring(0, 8), 16) % {n}: {got:?}"
            );
            if let Err(e) = got {
                assert!(
                    e.is_unroutable() && e.to_string().contains(&format!("{id:?}")),
                    "{e}"
                );
            }
        }
    }
}
