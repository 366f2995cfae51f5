//! The WebSocket pieces of the protocol (RFC 6455), sans-IO: the handshake's
//! accept key, frame headers, masking (a word at a time) and Close codes. The
//! streaming framing built on them lives with the runtime code.

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The GUID of RFC 6455 section 1.3, appended to the key before hashing.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The largest control frame payload RFC 6455 allows.
pub const MAX_CONTROL: usize = 125;
/// The longest header: 2 bytes, a 64-bit length and a mask key.
pub const MAX_HEADER: usize = 14;

/// Opcodes (RFC 6455 section 5.2).
pub const OP_CONTINUATION: u8 = 0x0;
/// A text frame (a protocol error on a tunnel, which is binary).
pub const OP_TEXT: u8 = 0x1;
/// A binary frame: the tunnel's bytes.
pub const OP_BINARY: u8 = 0x2;
/// Close.
pub const OP_CLOSE: u8 = 0x8;
/// Ping.
pub const OP_PING: u8 = 0x9;
/// Pong.
pub const OP_PONG: u8 = 0xa;
/// The FIN bit of the first header byte.
pub const FIN: u8 = 0x80;
/// The MASK bit of the second header byte.
pub const MASKED: u8 = 0x80;

/// Close status codes (RFC 6455 section 7.4.1) this protocol sends.
pub const CLOSE_NORMAL: u16 = 1000;
/// The endpoint is going away (a router draining at its deadline).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// A protocol error, and the answer to an invalid Close code.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Data of a type the endpoint cannot accept (a text frame).
pub const CLOSE_UNSUPPORTED_DATA: u16 = 1003;
/// Data inconsistent with its type (a Close reason that is not UTF-8).
pub const CLOSE_INVALID_PAYLOAD: u16 = 1007;
/// The tunnel failed (its backend reset or could not be reached).
pub const CLOSE_INTERNAL_ERROR: u16 = 1011;

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 section 4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Whether `key` is a valid `Sec-WebSocket-Key`: base64 of 16 bytes.
pub fn valid_key(key: &str) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|k| k.len() == 16)
}

/// Whether `code` may travel in a Close frame (RFC 6455 section 7.4): the
/// defined codes except those reserved for reporting (1004, 1005, 1006, 1015),
/// the IANA-registered 1012 to 1014, and the ranges for libraries and
/// applications (3000 to 4999).
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Writes a frame header for `len` payload bytes into `dst` (at least
/// [`MAX_HEADER`] long) with the shortest length encoding; returns its length.
pub fn encode_header(dst: &mut [u8], fin_opcode: u8, len: u64, mask: Option<[u8; 4]>) -> usize {
    let mask_bit = if mask.is_some() { MASKED } else { 0 };
    dst[0] = fin_opcode;
    let mut n = if len < 126 {
        dst[1] = mask_bit | len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        dst[1] = mask_bit | 126;
        dst[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        dst[1] = mask_bit | 127;
        dst[2..10].copy_from_slice(&len.to_be_bytes());
        10
    };
    if let Some(key) = mask {
        dst[n..n + 4].copy_from_slice(&key);
        n += 4;
    }
    n
}

/// XORs `data` with the mask `key`, `offset` bytes into the frame's payload:
/// eight bytes at a time, then the tail byte by byte.
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    let k: [u8; 4] = std::array::from_fn(|i| key[(offset + i) % 4]);
    let wide = u64::from_ne_bytes([k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]]);
    let mut words = data.chunks_exact_mut(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        word.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ wide).to_ne_bytes());
    }
    // Whole words keep the key's phase, so the tail starts at k[0].
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= k[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[wasm_bindgen_test::wasm_bindgen_test(unsupported = test)]
    fn the_accept_key_of_rfc_6455() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(valid_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!valid_key("c2hvcnQ="));
    }

    #[wasm_bindgen_test::wasm_bindgen_test(unsupported = test)]
    fn masking_a_word_at_a_time_matches_byte_by_byte_at_every_offset_and_length() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..40 {
            for offset in 0..8 {
                let data: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
                let mut wide = data.clone();
                apply_mask(&mut wide, key, offset);
                let bytewise: Vec<u8> = data
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ key[(offset + i) % 4])
                    .collect();
                assert_eq!(wide, bytewise, "len {len} offset {offset}");
            }
        }
    }

    #[wasm_bindgen_test::wasm_bindgen_test(unsupported = test)]
    fn headers_use_the_shortest_length_encoding() {
        let mut h = [0u8; MAX_HEADER];
        assert_eq!(encode_header(&mut h, FIN | OP_BINARY, 125, None), 2);
        assert_eq!(h[1], 125);
        assert_eq!(encode_header(&mut h, FIN | OP_BINARY, 126, None), 4);
        assert_eq!(
            encode_header(&mut h, FIN | OP_BINARY, 65_536, Some([1, 2, 3, 4])),
            14
        );
        assert_eq!(&h[10..14], &[1, 2, 3, 4]);
    }
}
