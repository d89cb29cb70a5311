//! The one error type of the kernel-facing parts.

use aya::{EbpfError, maps::MapError, programs::ProgramError};
use thiserror::Error;

/// What went wrong talking to the kernel, with what was being done.
#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error("loading the eBPF object")]
    Load(#[source] EbpfError),
    #[error("eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("the plan has {count} {what}, more than the kernel maps hold ({limit})")]
    TooMany {
        what: &'static str,
        count: usize,
        limit: u32,
    },
    #[error(
        "the policy needs {needed} entries in {map} while the other generation holds {held}, \
         more than its {capacity}: the maps were sized for the policy this daemon started \
         with; restart the daemon to size them for this one (enforcement carries on across \
         a restart)"
    )]
    Capacity {
        map: &'static str,
        needed: usize,
        held: usize,
        capacity: u32,
    },
    #[error("map {map}: {what}")]
    Map {
        map: &'static str,
        what: String,
        #[source]
        source: MapError,
    },
    #[error("pinned state: {what}")]
    Pin {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("program {program}: {what}")]
    Program {
        program: &'static str,
        what: String,
        #[source]
        source: ProgramError,
    },
}

/// A map error with the map's name and what was being done.
pub(crate) fn map_err(
    map: &'static str,
    what: impl Into<String>,
) -> impl FnOnce(MapError) -> DataplaneError {
    let what = what.into();
    move |source| DataplaneError::Map { map, what, source }
}

/// A program error with the program's name and what was being done.
pub(crate) fn prog_err(
    program: &'static str,
    what: impl Into<String>,
) -> impl FnOnce(ProgramError) -> DataplaneError {
    let what = what.into();
    move |source| DataplaneError::Program {
        program,
        what,
        source,
    }
}

/// An error about pinned state (maps, links, the state directory) from any source.
pub(crate) fn pin_err(
    what: impl Into<String>,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> DataplaneError {
    let what = what.into();
    move |source| DataplaneError::Pin { what, source }
}

/// An I/O error about pinned state.
pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DataplaneError {
    let what = what.into();
    move |source| DataplaneError::Pin {
        what,
        source: Box::new(source),
    }
}
