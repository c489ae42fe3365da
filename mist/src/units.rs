//! Sizes and durations as people write them, for the command line's flags
//! (`cli`) and the configuration file (`config`) alike.

use std::time::Duration;

/// `1048576`, `64KiB`, `1MiB`, `1.5GB`, ...: a number of bytes, with an
/// optional unit (decimal `kB`/`MB`/`GB` or binary `KiB`/`MiB`/`GiB`).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = text
        .trim()
        .parse()
        .map_err(|e| format!("{text:?} is not a size such as 1048576 or 64MiB ({e})"))?;
    usize::try_from(size.as_u64()).map_err(|_| format!("{text:?} is too large"))
}

/// `500ms`, `10s`, `1m`, `1h 30m`: a duration with a unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration such as 500ms or 10s ({e})"))
}
