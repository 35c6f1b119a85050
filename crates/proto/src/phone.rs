//! E.164 phone numbers: the user identity.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A phone number in E.164 form: `+` then 8 to 15 digits, the first not `0`.
///
/// Construction and deserialization both validate, so a `PhoneNumber` held
/// anywhere in the system is known to be well formed.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PhoneNumber(String);

/// Why a string is not an E.164 phone number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// The number does not start with `+`.
    #[error("a phone number must start with '+' and the country code (E.164), got {0:?}")]
    MissingPlus(String),
    /// Something other than a digit follows the `+`.
    #[error("a phone number may hold only digits after '+', got {0:?}")]
    NotDigits(String),
    /// Too few or too many digits.
    #[error("a phone number has 8 to 15 digits after '+', got {0:?}")]
    Length(String),
    /// Country codes never start with 0.
    #[error("a country code never starts with 0, got {0:?}")]
    LeadingZero(String),
}

impl PhoneNumber {
    /// Validates `s` as E.164. Spaces, dashes and parentheses are not accepted:
    /// clients normalise before they send.
    pub fn parse(s: &str) -> Result<Self, PhoneError> {
        let Some(digits) = s.strip_prefix('+') else {
            return Err(PhoneError::MissingPlus(s.to_owned()));
        };
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PhoneError::NotDigits(s.to_owned()));
        }
        if !(8..=15).contains(&digits.len()) {
            return Err(PhoneError::Length(s.to_owned()));
        }
        if digits.starts_with('0') {
            return Err(PhoneError::LeadingZero(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }

    /// The number `offset` after this one (`+15550000000` + 2 = `+15550000002`),
    /// if it is still a valid number of the same length.
    pub fn offset(&self, offset: u64) -> Option<Self> {
        let digits = &self.0[1..];
        let value: u64 = digits.parse().ok()?;
        let next = value.checked_add(offset)?;
        let text = format!("+{next:0width$}", width = digits.len());
        if text.len() != self.0.len() {
            return None;
        }
        Self::parse(&text).ok()
    }

    /// The number as text, with its leading `+`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PhoneNumber {
    type Err = PhoneError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for PhoneNumber {
    type Error = PhoneError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<PhoneNumber> for String {
    fn from(p: PhoneNumber) -> Self {
        p.0
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects_by_table() {
        let cases: &[(&str, bool)] = &[
            ("+15551234567", true),
            ("+447911123456", true),
            ("+12345678", true),
            ("+123456789012345", true),
            ("15551234567", false),
            ("+1555123456a", false),
            ("+1234567", false),
            ("+1234567890123456", false),
            ("+05551234567", false),
            ("+1 555 123 4567", false),
            ("", false),
            ("+", false),
        ];
        for (input, ok) in cases {
            assert_eq!(PhoneNumber::parse(input).is_ok(), *ok, "{input:?}");
        }
    }

    #[test]
    fn offsets_stay_valid_and_the_same_length() {
        let base = PhoneNumber::parse("+15550000000").expect("valid");
        assert_eq!(base.offset(42).map(|p| p.0), Some("+15550000042".into()));
        // 99999999 + 1 needs a ninth digit: not the same length.
        let top = PhoneNumber::parse("+99999999").expect("valid");
        assert_eq!(top.offset(1), None);
    }

    #[test]
    fn decoding_validates() {
        let bad = postcard::to_stdvec(&"+0123".to_string()).expect("encode");
        assert!(postcard::from_bytes::<PhoneNumber>(&bad).is_err());
        let good = postcard::to_stdvec(&"+15551234567".to_string()).expect("encode");
        let phone: PhoneNumber = postcard::from_bytes(&good).expect("decode");
        assert_eq!(phone.as_str(), "+15551234567");
    }
}
