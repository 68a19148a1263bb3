//! Trace and span ids (16 and 8 bytes, written as lowercase hex on the wire, never all zero),
//! and a span's place in its trace as the context headers carry it.
use std::time::{SystemTime, UNIX_EPOCH};

/// A span's context as a header carries it: its trace, the span (absent when an X-Ray
/// header names only the trace, as a load balancer writes it), and the sampling decision if
/// one was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: Option<SpanId>,
    pub sampled: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A new trace id whose first 4 bytes are the Unix time in seconds, so X-Ray (which
    /// reads them as the trace's start and refuses old ones) takes it; the rest is random.
    pub fn generate() -> Self {
        let seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_secs() as u32)
            .unwrap_or_default();
        let mut bytes: [u8; 16] = rand::random();
        bytes[..4].copy_from_slice(&seconds.to_be_bytes());
        Self(bytes)
    }

    /// 32 hex digits (or 16, B3's short form, taken as the low half); `None` when invalid
    /// or all zero.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 16];
        match text.len() {
            32 => decode_hex(text, &mut bytes)?,
            16 => decode_hex(text, &mut bytes[8..])?,
            _ => return None,
        }
        (bytes != [0; 16]).then_some(Self(bytes))
    }

    pub fn hex(&self) -> String {
        encode_hex(&self.0)
    }

    /// The low 8 bytes: what samplers compare (random in every generator we read).
    pub fn low_u64(&self) -> u64 {
        let mut low = [0u8; 8];
        low.copy_from_slice(&self.0[8..]);
        u64::from_be_bytes(low)
    }
}

impl SpanId {
    pub fn generate() -> Self {
        loop {
            let bytes: [u8; 8] = rand::random();
            if bytes != [0; 8] {
                return Self(bytes);
            }
        }
    }

    /// 16 hex digits; `None` when invalid or all zero.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 8];
        if text.len() != 16 {
            return None;
        }
        decode_hex(text, &mut bytes)?;
        (bytes != [0; 8]).then_some(Self(bytes))
    }

    pub fn hex(&self) -> String {
        encode_hex(&self.0)
    }
}

/// Fills `out` from exactly `2 * out.len()` hex digits (either case).
fn decode_hex(text: &str, out: &mut [u8]) -> Option<()> {
    let digits = text.as_bytes();
    if digits.len() != out.len() * 2 {
        return None;
    }
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let high = (pair[0] as char).to_digit(16)?;
        let low = (pair[1] as char).to_digit(16)?;
        *byte = (high * 16 + low) as u8;
    }
    Some(())
}

fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)] as char);
        text.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_hex() {
        let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        assert_eq!(trace.hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let span = SpanId::from_hex("00F067AA0BA902B7").unwrap();
        assert_eq!(span.hex(), "00f067aa0ba902b7");
    }

    #[test]
    fn short_b3_trace_ids_are_the_low_half() {
        let trace = TraceId::from_hex("a3ce929d0e0e4736").unwrap();
        assert_eq!(trace.hex(), "0000000000000000a3ce929d0e0e4736");
    }

    #[test]
    fn zero_malformed_and_wrong_length_ids_are_refused() {
        assert!(TraceId::from_hex(&"0".repeat(32)).is_none());
        assert!(TraceId::from_hex(&"g".repeat(32)).is_none());
        assert!(TraceId::from_hex("abc").is_none());
        assert!(SpanId::from_hex(&"0".repeat(16)).is_none());
        assert!(SpanId::from_hex("+1234567890abcde").is_none());
        assert!(SpanId::from_hex("éé34567890abcd").is_none());
    }

    #[test]
    fn generated_trace_ids_start_with_the_time() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as u32;
        let id = TraceId::generate();
        let seconds = u32::from_be_bytes(id.0[..4].try_into().unwrap());
        assert!(seconds.abs_diff(now) <= 1, "{seconds} vs {now}");
        assert_ne!(SpanId::generate(), SpanId::generate());
    }
}
