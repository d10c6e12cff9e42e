//! 32-byte object ids, written as 64 lowercase hex digits everywhere they
//! appear as text (object keys, JSON), so they can be compared by eye and
//! with `grep`.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

/// Text that is not an id: not exactly 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt data: {0}")]
pub struct InvalidId(String);

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lowercase hex.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(HEX_DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Parses exactly 64 hex digits (either case) into 32 bytes.
pub(crate) fn parse_hex32(text: &str) -> Result<[u8; 32], InvalidId> {
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return Err(InvalidId(format!(
            "expected 64 hex digits, got {} characters",
            digits.len()
        )));
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (Some(high), Some(low)) = (hex_value(pair[0]), hex_value(pair[1])) else {
            return Err(InvalidId(format!("invalid hex digit in {text:?}")));
        };
        *byte = (high << 4) | low;
    }
    Ok(out)
}

/// Defines a 32-byte id newtype with hex text, serde and ordering.
macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The id as 64 lowercase hex digits.
            pub fn to_hex(&self) -> String {
                to_hex(&self.0)
            }

            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;

            /// Accepts 64 hex digits in either case; object keys are only
            /// ever written in lowercase.
            fn from_str(text: &str) -> Result<Self, InvalidId> {
                parse_hex32(text).map($name)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct HexVisitor;

                impl Visitor<'_> for HexVisitor {
                    type Value = $name;

                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("64 hex digits")
                    }

                    // Borrowing the string avoids one allocation per id, which
                    // matters when a manifest lists millions of chunk ids.
                    fn visit_str<E: de::Error>(self, text: &str) -> Result<$name, E> {
                        text.parse().map_err(E::custom)
                    }
                }

                deserializer.deserialize_str(HexVisitor)
            }
        }
    };
}

define_id!(
    /// Identifies a chunk: the keyed BLAKE3 hash of its uncompressed bytes
    /// under the repository's `chunk_key` (see [`crate::ChunkHasher`]).
    ChunkId
);

define_id!(
    /// Identifies a pack: the plain BLAKE3 hash of the whole pack object, so
    /// anyone can check a downloaded pack against its key without the chunk key.
    PackId
);

define_id!(
    /// Identifies an index file: the plain BLAKE3 hash of its encoded bytes.
    IndexId
);

impl PackId {
    /// The id of a pack whose stored bytes are `pack`.
    pub fn compute(pack: &[u8]) -> Self {
        PackId(*blake3::hash(pack).as_bytes())
    }
}

impl IndexId {
    /// The id of an index file whose stored bytes are `encoded`.
    pub fn compute(encoded: &[u8]) -> Self {
        IndexId(*blake3::hash(encoded).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_and_parse_as_lowercase_hex() {
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = (i as u8).wrapping_mul(37);
        }
        let id = ChunkId(bytes);
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text, text.to_lowercase());
        assert_eq!(text.parse::<ChunkId>().expect("valid hex"), id);
        assert_eq!(
            text.to_uppercase().parse::<ChunkId>().expect("valid hex"),
            id
        );
        assert_eq!(
            serde_json::to_string(&id).expect("serializes"),
            format!("\"{text}\"")
        );
        let back: ChunkId = serde_json::from_str(&format!("\"{text}\"")).expect("parses");
        assert_eq!(back, id);
    }

    #[test]
    fn malformed_hex_is_rejected() {
        assert!("abc".parse::<PackId>().is_err());
        assert!("g".repeat(64).parse::<PackId>().is_err());
        assert!(serde_json::from_str::<IndexId>("\"00\"").is_err());
    }

    #[test]
    fn pack_and_index_ids_are_plain_blake3() {
        assert_eq!(
            PackId::compute(b"abc").to_hex(),
            blake3::hash(b"abc").to_hex().as_str()
        );
        assert_eq!(IndexId::compute(b"").0, *blake3::hash(b"").as_bytes());
    }
}
