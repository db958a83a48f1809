//! [`Strategy`]: the order an OPEN tries a connector's hosts in.

/// In which order an OPEN tries a connector's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// The first healthy host in list order; the others only when it fails.
    #[default]
    Failover,
    /// The starting host moves one place per OPEN, so streams spread over the hosts.
    RoundRobin,
}

impl Strategy {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Failover => "failover",
            Strategy::RoundRobin => "round_robin",
        }
    }

    /// `failover` or `round_robin` (any case, `-` for `_`).
    pub fn parse(s: &str) -> Result<Strategy, String> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "failover" => Ok(Strategy::Failover),
            "round_robin" => Ok(Strategy::RoundRobin),
            _ => Err(format!(
                "`{}` is not a strategy: failover or round_robin",
                s.chars()
                    .filter(|c| !c.is_control())
                    .take(40)
                    .collect::<String>()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_parse_and_print() {
        assert_eq!(Strategy::parse("failover"), Ok(Strategy::Failover));
        assert_eq!(Strategy::parse(" Round-Robin "), Ok(Strategy::RoundRobin));
        assert_eq!(Strategy::RoundRobin.as_str(), "round_robin");
        let e = Strategy::parse("random").expect_err("not a strategy");
        assert!(e.contains("`random`") && e.contains("round_robin"), "{e}");
    }
}
