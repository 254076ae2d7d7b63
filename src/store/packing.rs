//! The byte forms both of this server's packed records use (the webhook outbox's
//! staged batches, the session journal's log): numbers as varints, texts behind
//! their length, and a reader whose every read is checked, so a damaged record
//! is an error, never a panic.

use crate::domain::SessionId;

/// A signed number as an unsigned one whose size follows its magnitude.
pub(super) fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

pub(super) fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

/// `n` in 7-bit groups, low first, the high bit set on all but the last.
pub(super) fn push_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A varint of the text's length in bytes, then its UTF-8 bytes as they are.
pub(super) fn push_text(out: &mut Vec<u8>, text: &str) {
    push_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

/// A packed record as it is read.
pub(super) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The bytes not read yet.
    pub(super) fn remaining(&self) -> usize {
        self.rest.len()
    }

    pub(super) fn byte(&mut self) -> Result<u8, String> {
        let (&b, rest) = self.rest.split_first().ok_or("a batch cut short")?;
        self.rest = rest;
        Ok(b)
    }

    pub(super) fn bytes<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let (bytes, rest) = self.rest.split_first_chunk::<N>().ok_or("a batch cut short")?;
        self.rest = rest;
        Ok(*bytes)
    }

    pub(super) fn varint(&mut self) -> Result<u64, String> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            // The tenth byte holds the last bit: anything more does not fit.
            if shift == 63 && b > 1 {
                return Err("a number longer than 64 bits".into());
            }
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err("a number longer than 64 bits".into())
    }

    pub(super) fn text(&mut self) -> Result<&'a str, String> {
        let text = self.sized()?;
        std::str::from_utf8(text).map_err(|e| format!("a text that is not UTF-8: {e}"))
    }

    /// Past a text, its bytes not looked at (a record kept as it was read is
    /// checked when it is read for its fields).
    pub(super) fn skip_text(&mut self) -> Result<(), String> {
        self.sized().map(|_| ())
    }

    /// The bytes behind a varint of their length.
    fn sized(&mut self) -> Result<&'a [u8], String> {
        let length = usize::try_from(self.varint()?).map_err(|_| "a text longer than memory")?;
        if length > self.rest.len() {
            return Err(format!("a text of {length} bytes where {} are left", self.rest.len()));
        }
        let (bytes, rest) = self.rest.split_at(length);
        self.rest = rest;
        Ok(bytes)
    }

    pub(super) fn session_id(&mut self) -> Result<SessionId, String> {
        Ok(SessionId(uuid::Uuid::from_bytes(self.bytes()?)))
    }
}
