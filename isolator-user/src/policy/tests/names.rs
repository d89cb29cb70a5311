//! Valid names. The rules are tested by the `names-*` fixtures.

use super::*;

#[test]
fn names_at_the_limits_are_valid() {
    let max = "a".repeat(63);
    ok(&format!("version: 1\ntenants:\n  - name: {max}\n"));
    ok("version: 1\ntenants:\n  - name: 0a_b-c\n");
}

#[test]
fn same_segment_name_in_two_tenants_is_valid() {
    ok("
        version: 1
        tenants:
          - name: acme
            segments: [{name: web}]
          - name: globex
            segments: [{name: web}]
        ");
}
