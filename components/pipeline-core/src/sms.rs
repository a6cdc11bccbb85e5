//! How many SMS segments a text costs (3GPP TS 23.038): GSM-7 when every
//! character is in the GSM default alphabet (its extension table costs two
//! septets a character), UCS-2 otherwise. One segment holds 160 septets or
//! 70 UTF-16 units; a concatenated message loses room to its header, 153
//! and 67 per segment, and never splits an escape pair or a surrogate pair.
//!
//! Hand-written: the SMS crates on crates.io encode PDUs for modems; this
//! needs only the count, over a fixed table.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segments {
    pub encoding: Encoding,
    pub count: u32,
}

const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const GSM_EXTENDED: &str = "^{}\\[~]|€\u{c}";

/// Septets a character costs in GSM-7, or `None` if it has no GSM-7 form.
fn septets(c: char) -> Option<u32> {
    if GSM_BASIC.contains(c) {
        Some(1)
    } else if GSM_EXTENDED.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// Packs units of the given sizes into segments of `single` (one segment)
/// or `multi` (each of several) without splitting a unit.
fn pack(units: impl Iterator<Item = u32> + Clone, single: u32, multi: u32) -> u32 {
    if units.clone().sum::<u32>() <= single {
        return 1;
    }
    let (mut count, mut used) = (1, 0);
    for u in units {
        if used + u > multi {
            count += 1;
            used = 0;
        }
        used += u;
    }
    count
}

pub fn segments(text: &str) -> Segments {
    if text.chars().all(|c| septets(c).is_some()) {
        Segments {
            encoding: Encoding::Gsm7,
            count: pack(text.chars().map(|c| septets(c).unwrap_or(1)), 160, 153),
        }
    } else {
        Segments {
            encoding: Encoding::Ucs2,
            count: pack(text.chars().map(|c| c.len_utf16() as u32), 70, 67),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm7_fits_160_then_153_per_segment() {
        assert_eq!(segments(&"a".repeat(160)).count, 1);
        assert_eq!(segments(&"a".repeat(161)).count, 2);
        assert_eq!(segments(&"a".repeat(306)).count, 2);
        assert_eq!(segments(&"a".repeat(307)).count, 3);
        assert_eq!(segments("Hallo Jürgen, 20% off!").encoding, Encoding::Gsm7);
    }

    #[test]
    fn extension_characters_cost_two_septets_and_are_not_split() {
        assert_eq!(segments(&"€".repeat(80)).count, 1);
        assert_eq!(segments(&"€".repeat(81)).count, 2);
        // 152 septets then a two-septet euro: it moves whole to segment 2.
        let s = format!("{}€{}", "a".repeat(152), "a".repeat(10));
        assert_eq!(segments(&s).count, 2);
    }

    #[test]
    fn anything_else_is_ucs2_at_70_then_67() {
        let s = segments(&"ä😀".repeat(20));
        assert_eq!(s.encoding, Encoding::Ucs2);
        assert_eq!(segments(&"ł".repeat(70)).count, 1);
        assert_eq!(segments(&"ł".repeat(71)).count, 2);
        // 134 units would fill two parts of 67 exactly, but the emoji (two
        // units) after 66 must not be split: it opens part 2, so 3 parts.
        let e = format!("{}😀{}", "ł".repeat(66), "ł".repeat(66));
        assert_eq!(segments(&e).count, 3);
    }
}
