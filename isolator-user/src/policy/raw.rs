//! The policy file as written: serde types that keep source positions.
//!
//! Every struct denies unknown keys. Values that semantic validation may complain
//! about are wrapped in [`Spanned`] so the complaint can point at the file, line and column.
//! To add a key, add a field here (with `#[serde(default)]` if it is optional) and
//! convert/validate it in `validate.rs`.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_saphyr::{Location, Spanned};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub version: Spanned<RawVersion>,
    /// Global default mode; `None` when absent or written without a value.
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    #[serde(default)]
    pub connection_tracking: Option<RawConnectionTracking>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub management: Vec<RawManagement>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub vif_names: Vec<Spanned<RawLinkName>>,
    /// Required, but may be empty (`tenants: []`, or `tenants:` with no entries). Shared:
    /// a [`super::incremental::Cache`] keeps the tenants of the last file it read.
    #[serde(deserialize_with = "null_as_empty")]
    pub tenants: Vec<std::sync::Arc<RawTenant>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    pub name: Spanned<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub segments: Vec<RawSegment>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub flows: Vec<RawFlow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSegment {
    pub name: Spanned<String>,
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    #[serde(default)]
    pub egress: Option<Spanned<String>>,
    #[serde(default)]
    pub allow_router_advertisements: Option<Spanned<RawFlag>>,
    #[serde(default)]
    pub allow_dhcp_server: Option<Spanned<RawFlag>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub interfaces: Vec<RawInterface>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub prefixes: Vec<Spanned<String>>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub expose: Vec<RawExpose>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub gateways: Vec<RawGateway>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub uplinks: Vec<Spanned<RawLinkName>>,
}

/// One entry of a segment's `gateways:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    pub address: Spanned<String>,
    /// Absent, written without a value and empty all mean: no service.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub services: Vec<RawService>,
}

/// One entry of a segment's `expose:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExpose {
    pub address: Spanned<String>,
    pub protocol: Spanned<String>,
    #[serde(default)]
    pub ports: Option<Spanned<RawPorts>>,
}

/// One entry of a tenant's `flows:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFlow {
    pub from: Spanned<String>,
    pub to: Spanned<String>,
    pub protocol: Spanned<String>,
    #[serde(default)]
    pub ports: Option<Spanned<RawPorts>>,
}

/// One entry of `management:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawManagement {
    pub prefix: Spanned<String>,
    /// `None` when absent or written without a value (= every service); an explicit
    /// empty list is kept so validation can reject it.
    #[serde(default)]
    pub services: Option<Spanned<Vec<RawService>>>,
}

/// One entry of the `services:` of a management prefix or a gateway.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub protocol: Spanned<String>,
    #[serde(default)]
    pub ports: Option<Spanned<RawPorts>>,
}

/// `connection_tracking:`; every timeout is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConnectionTracking {
    #[serde(default)]
    pub tcp_idle_seconds: Option<Spanned<RawSeconds>>,
    #[serde(default)]
    pub tcp_closing_seconds: Option<Spanned<RawSeconds>>,
    #[serde(default)]
    pub udp_idle_seconds: Option<Spanned<RawSeconds>>,
    #[serde(default)]
    pub icmp_idle_seconds: Option<Spanned<RawSeconds>>,
}

/// One entry of `interfaces:`: a name or pattern (string form), or a mapping with
/// `name` and the interface's identity (mapping form). For the string form the span is
/// the name's position.
pub(super) type RawInterface = Spanned<RawInterfaceEntry>;

/// The two forms of an `interfaces:` entry.
///
/// Deserialized by hand, not as an untagged enum: serde buffers untagged enums in a
/// generic content type, which loses the spans of the `Spanned` fields inside
/// [`RawInterfaceMapping`]. The hand-written visitor hands serde-saphyr's own map access
/// to the derived mapping type, so every key keeps its position.
#[derive(Debug)]
pub(super) enum RawInterfaceEntry {
    Name(String),
    /// Boxed: much larger than the other variants.
    Mapping(Box<RawInterfaceMapping>),
    /// A scalar that YAML reads as something other than a string (`123`, `true`, `on`,
    /// or nothing at all): what it was read as, and the value rendered.
    NotAString {
        kind: &'static str,
        shown: String,
    },
}

impl RawInterfaceEntry {
    /// The interface name or pattern, with its position (`at` is the entry's own
    /// position, which is the name's for the string form). `None` for
    /// [`RawInterfaceEntry::NotAString`] and a mapping without `name`.
    pub fn name(&self, at: Location) -> Option<Spanned<&str>> {
        match self {
            RawInterfaceEntry::Name(name) => Some(Spanned::new(name.as_str(), at, at)),
            RawInterfaceEntry::Mapping(m) => m
                .name
                .as_ref()
                .map(|name| Spanned::new(name.value.as_str(), name.referenced, name.defined)),
            RawInterfaceEntry::NotAString { .. } => None,
        }
    }
}

/// The mapping form of an `interfaces:` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInterfaceMapping {
    /// Required; optional here so that a missing name is reported at the entry, with
    /// the other problems of the file.
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    #[serde(default)]
    pub mac: Option<Spanned<String>>,
    /// `None` when absent or written without a value; an explicit empty list is kept so
    /// validation can reject it.
    #[serde(default)]
    pub addresses: Option<Spanned<Vec<Spanned<String>>>>,
    /// `None` when absent or written without a value; empty is the same as absent.
    #[serde(default)]
    pub vlans: Option<Spanned<Vec<Spanned<RawVlan>>>>,
}

impl<'de> Deserialize<'de> for RawInterfaceEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntryVisitor;

        impl EntryVisitor {
            fn not_a_string<E: de::Error>(
                kind: &'static str,
                shown: String,
            ) -> Result<RawInterfaceEntry, E> {
                Ok(RawInterfaceEntry::NotAString { kind, shown })
            }
        }

        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = RawInterfaceEntry;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an interface name or pattern, or a mapping with `name`")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawInterfaceEntry, E> {
                Ok(RawInterfaceEntry::Name(v.to_owned()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<RawInterfaceEntry, E> {
                Ok(RawInterfaceEntry::Name(v))
            }

            fn visit_map<A: de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawInterfaceEntry, A::Error> {
                RawInterfaceMapping::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|mapping| RawInterfaceEntry::Mapping(Box::new(mapping)))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawInterfaceEntry, E> {
                Self::not_a_string("the number", v.to_string())
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawInterfaceEntry, E> {
                Self::not_a_string("the number", v.to_string())
            }

            fn visit_u128<E: de::Error>(self, v: u128) -> Result<RawInterfaceEntry, E> {
                Self::not_a_string("the number", v.to_string())
            }

            fn visit_i128<E: de::Error>(self, v: i128) -> Result<RawInterfaceEntry, E> {
                Self::not_a_string("the number", v.to_string())
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawInterfaceEntry, E> {
                Self::not_a_string("the number", format!("{v:?}"))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawInterfaceEntry, E> {
                Self::not_a_string("the boolean", v.to_string())
            }

            fn visit_unit<E: de::Error>(self) -> Result<RawInterfaceEntry, E> {
                Self::not_a_string("null", String::new())
            }

            fn visit_none<E: de::Error>(self) -> Result<RawInterfaceEntry, E> {
                self.visit_unit()
            }
        }

        deserializer.deserialize_any(EntryVisitor)
    }
}

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

/// A scalar kept loose, so that a wrong value gets a semantic error at its position
/// instead of a generic type error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RawScalar {
    Integer(i128),
    Text(String),
    Bool(bool),
    /// Anything else, rendered for the error message: `80.5`, `null`, `a list`,
    /// `a mapping`.
    Other(String),
}

impl RawScalar {
    /// The value as an operator would recognise it in a message (strings quoted).
    pub fn shown(&self) -> String {
        match self {
            RawScalar::Integer(n) => n.to_string(),
            RawScalar::Text(s) => format!("{s:?}"),
            RawScalar::Bool(b) => b.to_string(),
            RawScalar::Other(s) => s.clone(),
        }
    }
}

/// The `ports:` value: a number, or a `"first-last"` string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RawPorts(pub RawScalar);

/// A timeout in seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RawSeconds(pub RawScalar);

/// A VLAN id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RawVlan(pub RawScalar);

/// An entry of `vif_names` or `uplinks`: an interface name or pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RawLinkName(pub RawScalar);

/// A yes/no option (`true` or `false`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RawFlag(pub RawScalar);

impl<'de> Deserialize<'de> for RawPorts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_scalar(deserializer, "a port number or a \"first-last\" port range").map(Self)
    }
}

impl<'de> Deserialize<'de> for RawSeconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_scalar(deserializer, "a number of seconds").map(Self)
    }
}

impl<'de> Deserialize<'de> for RawVlan {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_scalar(deserializer, "a VLAN id").map(Self)
    }
}

impl<'de> Deserialize<'de> for RawLinkName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_scalar(deserializer, "an interface name or pattern").map(Self)
    }
}

impl<'de> Deserialize<'de> for RawFlag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_scalar(deserializer, "true or false").map(Self)
    }
}

fn deserialize_scalar<'de, D: Deserializer<'de>>(
    deserializer: D,
    expecting: &'static str,
) -> Result<RawScalar, D::Error> {
    struct ScalarVisitor(&'static str);

    impl<'de> Visitor<'de> for ScalarVisitor {
        type Value = RawScalar;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawScalar, E> {
            Ok(RawScalar::Integer(v.into()))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawScalar, E> {
            Ok(RawScalar::Integer(v.into()))
        }

        fn visit_u128<E: de::Error>(self, v: u128) -> Result<RawScalar, E> {
            Ok(match i128::try_from(v) {
                Ok(v) => RawScalar::Integer(v),
                Err(_) => RawScalar::Other(v.to_string()),
            })
        }

        fn visit_i128<E: de::Error>(self, v: i128) -> Result<RawScalar, E> {
            Ok(RawScalar::Integer(v))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawScalar, E> {
            Ok(RawScalar::Other(format!("{v:?}")))
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawScalar, E> {
            Ok(RawScalar::Bool(v))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<RawScalar, E> {
            Ok(RawScalar::Text(v.to_owned()))
        }

        fn visit_unit<E: de::Error>(self) -> Result<RawScalar, E> {
            Ok(RawScalar::Other("null".to_owned()))
        }

        fn visit_none<E: de::Error>(self) -> Result<RawScalar, E> {
            self.visit_unit()
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawScalar, A::Error> {
            while seq.next_element::<de::IgnoredAny>()?.is_some() {}
            Ok(RawScalar::Other("a list".to_owned()))
        }

        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<RawScalar, A::Error> {
            while map
                .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                .is_some()
            {}
            Ok(RawScalar::Other("a mapping".to_owned()))
        }
    }

    deserializer.deserialize_any(ScalarVisitor(expecting))
}
