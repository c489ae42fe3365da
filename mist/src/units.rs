//! Sizes and durations written as text (`64MiB`, `500ms`), read the same
//! way from a flag ([`crate::cli`]) and from the configuration file
//! ([`crate::config`]). Both look down at this module; it looks at neither.

use std::time::Duration;

/// `1048576`, `64KiB`, `1MiB`, `1.5GB`, ...: a number of bytes, with an
/// optional unit (decimal `kB`/`MB`/`GB` or binary `KiB`/`MiB`/`GiB`).
///
/// ```
/// assert_eq!(mist::units::parse_size("64KiB"), Ok(65536));
/// assert!(mist::units::parse_size("lots").is_err());
/// ```
pub fn parse_size(text: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = text
        .trim()
        .parse()
        .map_err(|e| format!("{text:?} is not a size such as 1048576 or 64MiB ({e})"))?;
    usize::try_from(size.as_u64()).map_err(|_| format!("{text:?} is too large"))
}

/// `500ms`, `10s`, `1m`, `1h 30m`: a duration with a unit.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(mist::units::parse_duration("1m"), Ok(Duration::from_secs(60)));
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration such as 500ms or 10s ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_need_their_units_where_it_matters() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size(" 1048576 "), Ok(1 << 20));
        assert_eq!(parse_size("1kB"), Ok(1000));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(
            parse_duration("10").is_err(),
            "a flag's duration needs its unit"
        );
    }
}
