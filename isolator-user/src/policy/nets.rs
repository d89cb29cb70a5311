//! Which of many prefixes contain, or lie within, a given one, without comparing it with
//! each: the prefixes of a family sorted by (network address, length). Prefixes are
//! either nested or disjoint, so those within a prefix are the run that follows it in
//! that order, and those containing it are at most one per length, each found by a
//! binary search for the prefix cut to that length (only lengths some entry has are
//! tried).

use ipnet::IpNet;

/// A prefix as two numbers: its network address (an IPv4 one in the low 32 bits) and its
/// length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    addr: u128,
    len: u8,
}

impl Key {
    fn of(net: &IpNet) -> (usize, Key) {
        match net {
            IpNet::V4(n) => (
                0,
                Key {
                    addr: u32::from(n.network()).into(),
                    len: n.prefix_len(),
                },
            ),
            IpNet::V6(n) => (
                1,
                Key {
                    addr: u128::from(n.network()),
                    len: n.prefix_len(),
                },
            ),
        }
    }
}

/// Bits of an address of each family.
const BITS: [u8; 2] = [32, 128];

/// The network address of `addr` cut to `len` bits, in a family of `bits` bits.
fn cut(addr: u128, len: u8, bits: u8) -> u128 {
    match bits - len {
        0 => addr,
        128 => 0,
        host => addr >> host << host,
    }
}

/// The last address of the prefix.
fn last(key: Key, bits: u8) -> u128 {
    match bits - key.len {
        0 => key.addr,
        128 => u128::MAX,
        host => key.addr | ((1u128 << host) - 1),
    }
}

/// The prefixes of one family.
#[derive(Default)]
struct Family {
    /// (prefix, entry number), sorted.
    sorted: Vec<(Key, u32)>,
    /// Bit `l` of `lengths[l / 128]` is set when some entry has length `l`.
    lengths: [u128; 2],
}

impl Family {
    fn has_length(&self, len: u8) -> bool {
        let len = usize::from(len);
        self.lengths[len / 128] >> (len % 128) & 1 == 1
    }

    /// The run of entries equal to `key`.
    fn equal(&self, key: Key) -> &[(Key, u32)] {
        let start = self.sorted.partition_point(|(k, _)| *k < key);
        let end = start + self.sorted[start..].partition_point(|(k, _)| *k == key);
        &self.sorted[start..end]
    }
}

/// Prefixes, numbered in the order given.
pub(crate) struct NetIndex {
    families: [Family; 2],
}

impl NetIndex {
    pub(crate) fn new<'n>(nets: impl IntoIterator<Item = &'n IpNet>) -> NetIndex {
        let mut families: [Family; 2] = Default::default();
        for (entry, net) in nets.into_iter().enumerate() {
            let (family, key) = Key::of(net);
            let family = &mut families[family];
            family.sorted.push((key, entry as u32));
            let len = usize::from(key.len);
            family.lengths[len / 128] |= 1 << (len % 128);
        }
        for family in &mut families {
            family.sorted.sort_unstable();
        }
        NetIndex { families }
    }

    /// The entries that contain `net`, the equal ones included, ascending.
    pub(crate) fn containing(&self, net: &IpNet) -> Vec<usize> {
        let mut out = Vec::new();
        let (_, key) = Key::of(net);
        self.push_containing(net, 0..=key.len, &mut out);
        out.sort_unstable();
        out
    }

    /// Pushes the entries of the lengths `lengths` that contain `net`.
    fn push_containing(
        &self,
        net: &IpNet,
        lengths: impl Iterator<Item = u8>,
        out: &mut Vec<usize>,
    ) {
        let (family, key) = Key::of(net);
        let bits = BITS[family];
        let family = &self.families[family];
        for len in lengths.filter(|&len| family.has_length(len)) {
            let cut = Key {
                addr: cut(key.addr, len, bits),
                len,
            };
            out.extend(family.equal(cut).iter().map(|(_, e)| *e as usize));
        }
    }

    /// The entries that contain `net` or lie within it (the equal ones included),
    /// ascending.
    pub(crate) fn overlapping(&self, net: &IpNet) -> Vec<usize> {
        let (family, key) = Key::of(net);
        let sorted = &self.families[family].sorted;
        // Those within it (the equal ones first) follow where it would be.
        let start = sorted.partition_point(|(k, _)| *k < key);
        let last = last(key, BITS[family]);
        let within = sorted[start..].partition_point(|(k, _)| k.addr <= last);
        let mut out: Vec<usize> = sorted[start..start + within]
            .iter()
            .map(|(_, e)| *e as usize)
            .collect();
        self.push_containing(net, 0..key.len, &mut out);
        out.sort_unstable();
        out
    }

    /// For each entry, the entries before it (in the order given) that contain it, lie
    /// within it or are equal to it, ascending; empty for most entries of a valid policy.
    pub(crate) fn earlier_overlapping(&self) -> Vec<Vec<u32>> {
        let count = self.families.iter().map(|f| f.sorted.len()).sum();
        let mut earlier: Vec<Vec<u32>> = vec![Vec::new(); count];
        for (family, bits) in self.families.iter().zip(BITS) {
            // The chain of entries that contain the current one, outermost first.
            let mut open: Vec<(Key, u32)> = Vec::new();
            for &(key, entry) in &family.sorted {
                while let Some(&(top, _)) = open.last() {
                    if key.addr <= last(top, bits) {
                        break;
                    }
                    open.pop();
                }
                for &(_, other) in &open {
                    let (first, second) = (other.min(entry), other.max(entry));
                    earlier[second as usize].push(first);
                }
                open.push((key, entry));
            }
        }
        for list in &mut earlier {
            list.sort_unstable();
        }
        earlier
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETS: &[&str] = &[
        "10.0.0.0/8",
        "10.1.0.0/16",
        "10.1.1.0/24",
        "10.1.1.0/24",
        "10.1.2.0/24",
        "10.1.1.7/32",
        "10.2.0.0/16",
        "11.0.0.0/8",
        "0.0.0.0/0",
        "255.255.255.255/32",
        "fd00::/8",
        "fd00:1::/32",
        "fd00:1::/48",
        "fd00:2::/32",
        "::/0",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
        "fd00:1::1/128",
    ];

    const QUERIES: &[&str] = &[
        "10.1.1.0/24",
        "10.1.1.128/25",
        "10.0.0.0/7",
        "12.0.0.0/8",
        "0.0.0.0/0",
        "255.255.255.254/31",
        "fd00:1::/40",
        "fd00:1::1/128",
        "fe80::/10",
        "::/0",
        "::/1",
    ];

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// Every answer is what comparing with each entry gives.
    #[test]
    fn the_index_finds_what_comparing_with_every_entry_finds() {
        let entries = nets(NETS);
        let index = NetIndex::new(&entries);
        for query in nets(QUERIES).iter().chain(&entries) {
            let containing: Vec<usize> = (0..entries.len())
                .filter(|&i| entries[i].contains(query))
                .collect();
            assert_eq!(index.containing(query), containing, "containing {query}");
            let overlapping: Vec<usize> = (0..entries.len())
                .filter(|&i| entries[i].contains(query) || query.contains(&entries[i]))
                .collect();
            assert_eq!(index.overlapping(query), overlapping, "overlapping {query}");
        }
        let earlier = index.earlier_overlapping();
        for (j, b) in entries.iter().enumerate() {
            let expected: Vec<u32> = (0..j)
                .filter(|&i| entries[i].contains(b) || b.contains(&entries[i]))
                .map(|i| i as u32)
                .collect();
            assert_eq!(earlier[j], expected, "before {b}");
        }
    }
}
