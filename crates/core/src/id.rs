//! Device identifiers: `[A-Za-z0-9_.-]{1,64}` (PROTOCOL.md §2).

use std::fmt;
use std::sync::Arc;

/// A validated device id. Cloning is cheap (shared string), because one id
/// travels with every message through queue, sinks and fan-out.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(Arc<str>);

/// Why a string is not a device id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    #[error("device id is empty")]
    Empty,
    #[error("device id is longer than 64 characters")]
    TooLong,
    #[error("device id contains a character outside [A-Za-z0-9_.-]")]
    BadChar,
}

impl DeviceId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<Self, DeviceIdError> {
        Self::validate(s)?;
        Ok(Self(Arc::from(s)))
    }

    /// Checks `s` without allocating.
    pub fn validate(s: &str) -> Result<(), DeviceIdError> {
        if s.is_empty() {
            return Err(DeviceIdError::Empty);
        }
        if s.len() > Self::MAX_LEN {
            return Err(DeviceIdError::TooLong);
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(DeviceIdError::BadChar);
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for DeviceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DeviceId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(DeviceId::parse("truck-7_a.B9").is_ok());
        assert!(DeviceId::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn rejects_everything_else() {
        assert_eq!(DeviceId::parse(""), Err(DeviceIdError::Empty));
        assert_eq!(
            DeviceId::parse(&"a".repeat(65)),
            Err(DeviceIdError::TooLong)
        );
        for bad in ["a/b", "a b", "ä", "+", "#", "a\0"] {
            assert_eq!(DeviceId::parse(bad), Err(DeviceIdError::BadChar), "{bad:?}");
        }
    }
}
