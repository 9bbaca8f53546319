//! CAIP-2 network identifiers for EVM chains.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// An EVM network as a CAIP-2 id, `eip155:<chainId>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Network {
    /// The EIP-155 chain id.
    pub chain_id: u64,
}

impl Network {
    /// The network of `chain_id`.
    pub const fn new(chain_id: u64) -> Self {
        Self { chain_id }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "eip155:{}", self.chain_id)
    }
}

impl FromStr for Network {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let id = s.strip_prefix("eip155:").ok_or_else(|| Error::InvalidNetwork(s.to_owned()))?;
        // Canonical decimal only: no sign, no leading zeros, no whitespace.
        if id.is_empty() || (id.len() > 1 && id.starts_with('0')) || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::InvalidNetwork(s.to_owned()));
        }
        id.parse().map(Self::new).map_err(|_| Error::InvalidNetwork(s.to_owned()))
    }
}

impl Serialize for Network {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        for (input, expected) in [
            ("eip155:1", Some(1)),
            ("eip155:31337", Some(31337)),
            ("eip155:0", Some(0)),
            ("eip155:", None),
            ("eip155:01", None),
            ("eip155:-1", None),
            ("eip155: 1", None),
            ("solana:1", None),
            ("eip155:18446744073709551616", None),
        ] {
            let parsed = input.parse::<Network>().ok().map(|n| n.chain_id);
            assert_eq!(parsed, expected, "{input}");
            if let Some(id) = expected {
                assert_eq!(Network::new(id).to_string(), input);
            }
        }
    }
}
