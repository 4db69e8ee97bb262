//! The value types of flags whose defaults are durations or sizes: each parses what an
//! operator writes (`20s`, `24MiB`) and displays a value the same way, so `--help`
//! shows a default computed from the args' `Default` exactly as it would be typed.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A duration as flags write it: `30s`, `500ms`, `2m` (humantime).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Span(pub Duration);

impl Span {
    pub const fn secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    pub const fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for Span {
    type Err = humantime::DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s).map(Self)
    }
}

impl fmt::Display for Span {
    /// Whole seconds as `60s` (humantime would write `1m`), whole milliseconds as
    /// `500ms`, anything finer as humantime writes it; every form parses back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{}s", d.as_secs())
        } else if d.subsec_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}", humantime::format_duration(d))
        }
    }
}

/// A size in bytes as flags write it: `16384`, `16KiB`, `24MiB`, `1GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Size(pub usize);

impl Size {
    pub const fn kib(n: usize) -> Self {
        Self(n << 10)
    }

    pub const fn mib(n: usize) -> Self {
        Self(n << 20)
    }

    pub const fn get(self) -> usize {
        self.0
    }
}

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s).map(Self)
    }
}

impl fmt::Display for Size {
    /// In the largest binary unit that divides it: `24MiB`, `16KiB`, `1000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if n != 0 && n.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}")
    }
}

/// A size in bytes: `16384`, `16KiB`, `24MiB`, `1GiB` (also `KB`/`MB`/`GB` as powers of 1024).
pub(crate) fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 16384, 16KiB, 24MiB)"))?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_display_as_they_are_written_and_parse_back() {
        for (d, shown) in [
            (Duration::from_secs(60), "60s"),
            (Duration::from_secs(20), "20s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1_000_001), "1ms 1ns"),
        ] {
            assert_eq!(Span(d).to_string(), shown);
            assert_eq!(shown.parse::<Span>().map(Span::get), Ok(d));
        }
        assert!("soon".parse::<Span>().is_err());
    }

    #[test]
    fn sizes_display_in_the_largest_unit_and_parse_back() {
        for (n, shown) in [
            (24 << 20, "24MiB"),
            (16 << 10, "16KiB"),
            (1 << 30, "1GiB"),
            (1536, "1536"),
            (1000, "1000"),
            (0, "0"),
        ] {
            assert_eq!(Size(n).to_string(), shown);
            assert_eq!(shown.parse::<Size>(), Ok(Size(n)));
        }
        assert_eq!(Size::mib(24), Size(24 << 20));
        assert_eq!(Size::kib(16).get(), 16384);
    }

    #[test]
    fn sizes_parse_the_units_operators_write() {
        assert_eq!(parse_size("16384"), Ok(16384));
        assert_eq!(parse_size("16KiB"), Ok(16 << 10));
        assert_eq!(parse_size(" 24 mb "), Ok(24 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert!(parse_size("3TiB")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(parse_size(&format!("{}GiB", usize::MAX))
            .unwrap_err()
            .contains("too large"));
    }
}
