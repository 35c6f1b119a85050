//! What counts as one source of connections or requests, for every
//! per-source limit (client admission, auth limits, the cluster port).

use std::net::IpAddr;

/// An IPv4 address, or the /64 of an IPv6 address (one host usually holds
/// a whole /64, so its addresses are one source). An IPv4-mapped IPv6
/// address (a dual-stack listener's view of an IPv4 client) counts as the
/// IPv4 address.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn sources_are_addresses_and_ipv6_slash_64s() {
        let cases = [
            ("10.0.0.1", "10.0.0.1"),
            ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::"),
            ("2001:db8:1:2::1", "2001:db8:1:2::"),
            ("::ffff:10.0.0.1", "10.0.0.1"),
        ];
        for (addr, source) in cases {
            assert_eq!(source_of(ip(addr)), ip(source), "{addr}");
        }
    }

    #[test]
    fn one_ipv6_host_is_one_source() {
        for (a, b, same) in [
            ("2001:db8::1", "2001:db8::ffff:1", true),
            ("2001:db8:0:1::1", "2001:db8:0:2::1", false),
            ("::ffff:10.0.0.1", "10.0.0.1", true),
            ("10.0.0.1", "10.0.0.2", false),
        ] {
            assert_eq!(source_of(ip(a)) == source_of(ip(b)), same, "{a} {b}");
        }
    }
}
