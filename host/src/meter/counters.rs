//! The counter rows of `meter_totals`: their key layout (see the
//! module's tables) and their value, eight `u64`s and the stamp of the
//! batch that last wrote the row (see `writer.rs`).

use super::error::MeterError;
use super::ledger::UsageKind;

/// The dimension tags of counter keys (see the module's tree table).
pub(crate) mod dim {
    pub const ORG: u8 = b'o';
    pub const PROJECT: u8 = b'p';
    pub const END_USER: u8 = b'u';
    pub const KEY: u8 = b'k';
    pub const SESSION: u8 = b's';
    pub const NAME: u8 = b'n';
}

/// The period tag of a day bucket.
pub(crate) const DAY: u8 = b'd';
/// The period tag of a month bucket.
pub(crate) const MONTH: u8 = b'm';

/// `org 0x00 dim period`: every counter row of one dimension and period
/// of an org, in bucket order.
pub(crate) fn counter_prefix(org: &str, dim: u8, period: u8) -> Vec<u8> {
    let mut key = Vec::with_capacity(org.len() + 48);
    key.extend_from_slice(org.as_bytes());
    key.extend_from_slice(&[0, dim, period]);
    key
}

/// `org 0x00 dim period bucket(u32 BE) member`, the member's parts joined
/// by `0x00`.
pub(crate) fn counter_key(org: &str, dim: u8, period: u8, bucket: u32, member: &[&str]) -> Vec<u8> {
    let mut key = counter_prefix(org, dim, period);
    key.extend_from_slice(&bucket.to_be_bytes());
    for (i, part) in member.iter().enumerate() {
        if i > 0 {
            key.push(0);
        }
        key.extend_from_slice(part.as_bytes());
    }
    key
}

/// The quantities one counter row sums: eight `u64`s, little-endian.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub(crate) cost_micros: u64,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) cache_read_tokens: u64,
    pub(crate) cache_write_tokens: u64,
    pub(crate) fuel: u64,
    pub(crate) tool_calls: u64,
    pub(crate) model_calls: u64,
}

/// The size of encoded [`Counters`] without a stamp (rows written before
/// group commit).
const COUNTERS_LEN: usize = 64;
/// The size of encoded [`Counters`] with the writer's stamp.
pub(crate) const STAMPED_LEN: usize = COUNTERS_LEN + 8;

impl Counters {
    /// What one record adds.
    pub(crate) fn of(kind: &UsageKind, cost_micros: u64) -> Self {
        let mut counters = Counters {
            cost_micros,
            ..Counters::default()
        };
        match kind {
            UsageKind::Model {
                input_tokens,
                output_tokens,
                cache_read_tokens,
                cache_write_tokens,
                ..
            } => {
                counters.input_tokens = *input_tokens;
                counters.output_tokens = *output_tokens;
                counters.cache_read_tokens = *cache_read_tokens;
                counters.cache_write_tokens = *cache_write_tokens;
                counters.model_calls = 1;
            }
            UsageKind::Tool { fuel, .. } => {
                counters.fuel = *fuel;
                counters.tool_calls = 1;
            }
        }
        counters
    }

    fn fields(&self) -> [u64; 8] {
        [
            self.cost_micros,
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.fuel,
            self.tool_calls,
            self.model_calls,
        ]
    }

    fn from_fields(f: [u64; 8]) -> Self {
        Counters {
            cost_micros: f[0],
            input_tokens: f[1],
            output_tokens: f[2],
            cache_read_tokens: f[3],
            cache_write_tokens: f[4],
            fuel: f[5],
            tool_calls: f[6],
            model_calls: f[7],
        }
    }

    /// Adds `other`, saturating: a counter pinned at `u64::MAX` is wrong
    /// by less than a wrapped one, and over-bills rather than under-bills.
    pub(crate) fn add(&mut self, other: &Counters) {
        let (mine, theirs) = (self.fields(), other.fields());
        *self = Self::from_fields(std::array::from_fn(|i| mine[i].saturating_add(theirs[i])));
    }

    /// The row's value: the eight counters, then `stamp` (u64 LE).
    pub(crate) fn encode(&self, stamp: u64) -> [u8; STAMPED_LEN] {
        let mut bytes = [0u8; STAMPED_LEN];
        let values = self.fields().into_iter().chain([stamp]);
        for (chunk, value) in bytes.chunks_exact_mut(8).zip(values) {
            chunk.copy_from_slice(&value.to_le_bytes());
        }
        bytes
    }

    /// A row as written by [`Counters::encode`] (or without the stamp, as
    /// before group commit); anything else is corrupt.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, MeterError> {
        Ok(Self::decode_stamped(bytes)?.0)
    }

    /// A row and its stamp (0 for a row without one).
    pub(crate) fn decode_stamped(bytes: &[u8]) -> Result<(Self, u64), MeterError> {
        if bytes.len() != COUNTERS_LEN && bytes.len() != STAMPED_LEN {
            return Err(MeterError::corrupt("a counter is not 64 or 72 bytes"));
        }
        let mut words = [0u64; 9];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut le = [0u8; 8];
            le.copy_from_slice(chunk);
            *word = u64::from_le_bytes(le);
        }
        let fields = std::array::from_fn(|i| words[i]);
        Ok((Self::from_fields(fields), words[8]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_round_trip_and_saturate() {
        let mut counters = Counters::of(
            &UsageKind::Tool {
                tool: "t".into(),
                fuel: 7,
                wall_us: 1,
            },
            3,
        );
        assert_eq!(
            Counters::decode_stamped(&counters.encode(9)).expect("decode"),
            (counters, 9)
        );
        assert_eq!(
            Counters::decode_stamped(&counters.encode(9)[..64]).expect("decode"),
            (counters, 0),
            "a row from before stamps"
        );
        counters.add(&Counters {
            fuel: u64::MAX,
            ..Counters::default()
        });
        assert_eq!(
            (counters.fuel, counters.cost_micros, counters.tool_calls),
            (u64::MAX, 3, 1)
        );
        assert!(Counters::decode(&[0; 63]).is_err());
    }
}
