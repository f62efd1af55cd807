//! GPT-2's reversible byte <-> printable-character map: byte-level BPE vocabularies store token
//! texts in this alphabet (`Ġ` for a space), so decoding maps each character back to its byte.

use std::sync::OnceLock;

/// Bytes that GPT-2 keeps as their own character; the other 68 map to U+0100.. in byte order.
fn is_kept(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// byte -> char (the direction the `tokenizers` crate's ByteLevel applies when encoding).
#[cfg(test)]
fn byte_to_char(b: u8) -> char {
    static TABLE: OnceLock<[char; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = ['\0'; 256];
        let mut next = 256u32;
        for b in 0..=255u8 {
            t[b as usize] = if is_kept(b) {
                b as char
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap_or('\u{FFFD}')
            };
        }
        t
    })[b as usize]
}

/// char -> byte, `None` for characters outside the 256-character alphabet.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let c = c as u32;
    match c {
        0..=255 if is_kept(c as u8) => Some(c as u8),
        // The n-th byte that is not kept maps to 256 + n.
        256..=323 => {
            static SHIFTED: OnceLock<Vec<u8>> = OnceLock::new();
            SHIFTED.get_or_init(|| (0..=255u8).filter(|&b| !is_kept(b)).collect()).get((c - 256) as usize).copied()
        }
        _ => None,
    }
}

/// Appends the bytes a byte-level token text stands for; characters outside the alphabet (added
/// tokens converted verbatim) are kept as their own UTF-8.
pub(crate) fn decode_into(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_byte() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
    }
}
