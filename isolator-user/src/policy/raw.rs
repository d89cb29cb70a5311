//! The policy file as written: serde types that keep source positions.
//!
//! Every struct denies unknown keys. Values that semantic validation may complain
//! about are wrapped in [`Spanned`] so the complaint can point at the file, line and column.
//! To add a key, add a field here (with `#[serde(default)]` if it is optional) and
//! convert/validate it in `validate.rs`.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub version: Spanned<RawVersion>,
    /// Required, but may be empty (`tenants: []`, or `tenants:` with no entries).
    #[serde(deserialize_with = "null_as_empty")]
    pub tenants: Vec<RawTenant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    pub name: Spanned<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub segments: Vec<RawSegment>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSegment {
    pub name: Spanned<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub interfaces: Vec<RawInterface>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub prefixes: Vec<Spanned<String>>,
}

/// One entry of `interfaces:`. Today a plain string (name or pattern).
///
/// When the mapping form (`{name: ..., mac: ..., addresses: [...]}`) arrives, turn this
/// into `Spanned<RawInterfaceEntry>` with an untagged enum inside: serde-saphyr loses
/// spans of `Spanned` fields nested in untagged variants, so wrap the whole enum.
pub(super) type RawInterface = Spanned<String>;

/// The `version:` value, kept loose so a wrong value gets a semantic error at the
/// value's position instead of a generic type error at the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RawVersion {
    Number(u64),
    /// Anything else, rendered for the error message (strings are quoted).
    Other(String),
}

impl<'de> Deserialize<'de> for RawVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct VersionVisitor;

        impl<'de> Visitor<'de> for VersionVisitor {
            type Value = RawVersion;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the policy format version number")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawVersion, E> {
                Ok(RawVersion::Number(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawVersion, E> {
                Ok(match u64::try_from(v) {
                    Ok(v) => RawVersion::Number(v),
                    Err(_) => RawVersion::Other(v.to_string()),
                })
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawVersion, E> {
                Ok(RawVersion::Other(format!("{v:?}")))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawVersion, E> {
                Ok(RawVersion::Other(v.to_string()))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawVersion, E> {
                Ok(RawVersion::Other(format!("{v:?}")))
            }

            fn visit_unit<E: de::Error>(self) -> Result<RawVersion, E> {
                Ok(RawVersion::Other("null".to_owned()))
            }

            fn visit_none<E: de::Error>(self) -> Result<RawVersion, E> {
                self.visit_unit()
            }
        }

        deserializer.deserialize_any(VersionVisitor)
    }
}

/// Lists may be written as an empty key (`interfaces:`), which YAML reads as null.
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}
