//! Names: tenant and segment names follow the name rules and are unique.

use std::collections::HashMap;

use serde_saphyr::{Location, Spanned};

use super::{Checker, pos};
use crate::policy::NAME_MAX_LEN;

/// Tenant and segment names: their form, and that they are unique.
pub(super) fn check(cx: &mut Checker<'_>) {
    let raw = cx.raw;
    let mut tenant_names: HashMap<&str, Location> = HashMap::new();
    for tenant in &raw.tenants {
        check_name(cx, "tenant", &tenant.name);
        let name = tenant.name.value.as_str();
        if let Some(first) = tenant_names.get(name) {
            cx.error(
                &tenant.name.referenced,
                format!(
                    "duplicate tenant name {name:?}: already defined at {}",
                    pos(first)
                ),
                Some("give each tenant a unique name, or merge the two entries".to_owned()),
            );
        } else {
            tenant_names.insert(name, tenant.name.referenced);
        }

        let mut segment_names: HashMap<&str, Location> = HashMap::new();
        for segment in &tenant.segments {
            check_name(cx, "segment", &segment.name);
            let seg = segment.name.value.as_str();
            if let Some(first) = segment_names.get(seg) {
                cx.error(
                    &segment.name.referenced,
                    format!(
                        "duplicate segment name {seg:?} in tenant {name:?}: already defined at {}",
                        pos(first)
                    ),
                    Some(
                        "give each segment of a tenant a unique name, or merge the two entries"
                            .to_owned(),
                    ),
                );
            } else {
                segment_names.insert(seg, segment.name.referenced);
            }
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
}

/// A valid name derived from an invalid one, if there is an obvious one.
fn suggest_name(name: &str) -> Option<String> {
    let mut out = String::new();
    for c in name.trim().chars().flat_map(char::to_lowercase) {
        let c = if is_name_char(c) { c } else { '-' };
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    let out = out.trim_matches(|c| c == '-' || c == '_').to_owned();
    (!out.is_empty() && out.len() <= NAME_MAX_LEN && out != name).then_some(out)
}

fn check_name(cx: &mut Checker<'_>, kind: &str, name: &Spanned<String>) {
    const RULES: &str = "names use lowercase letters a-z, digits 0-9, '-' and '_', start with a \
                         letter or digit, and have at most 63 characters";
    let value = name.value.as_str();
    let mut bad: Vec<String> = Vec::new();
    for c in value.chars().filter(|&c| !is_name_char(c)) {
        let shown = if c.is_whitespace() {
            "whitespace".to_owned()
        } else {
            format!("{c:?}")
        };
        if !bad.contains(&shown) {
            bad.push(shown);
        }
    }

    let message = if value.is_empty() {
        format!("{kind} name is empty")
    } else if !bad.is_empty() {
        format!(
            "{kind} name {value:?} contains {}, which is not allowed in names",
            bad.join(", ")
        )
    } else if value.starts_with(['-', '_']) {
        format!("{kind} name {value:?} must start with a lowercase letter or digit")
    } else if value.len() > NAME_MAX_LEN {
        format!(
            "{kind} name {value:?} is {} characters long; the maximum is {NAME_MAX_LEN}",
            value.len()
        )
    } else {
        return;
    };
    let help = match suggest_name(value) {
        Some(suggestion) => format!("did you mean {suggestion:?}? {RULES}"),
        None => RULES.to_owned(),
    };
    cx.error(&name.referenced, message, Some(help));
}
