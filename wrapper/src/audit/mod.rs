//! The audit trail: one record per store and delete.

/// How a map writes keys or values into its audit records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ValuePolicy {
    /// The value itself, serialized.
    #[default]
    Full,
    /// A keyed digest (HMAC-SHA256) of the serialized value, with the key's id: equal values
    /// can be matched without being revealed.
    Digest,
    /// Nothing but the fact that a value was there.
    Redacted,
}
