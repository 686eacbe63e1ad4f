//! The SDK's one error type: opaque, with `is_*` predicates, so new kinds never break a plugin.

use std::fmt;

/// A status the host answered with (the ABI's whole list; the mock answers only some).
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Ok,
    NotFound,
    BadArgument,
    SerializationFailure,
    ParseFailure,
    Empty,
    CasMismatch,
    InternalFailure,
    Unimplemented,
    Other(u32),
}

#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
impl Status {
    pub(crate) fn from_raw(raw: u32) -> Status {
        match raw {
            0 => Status::Ok,
            1 => Status::NotFound,
            2 => Status::BadArgument,
            3 => Status::SerializationFailure,
            4 => Status::ParseFailure,
            7 => Status::Empty,
            8 => Status::CasMismatch,
            10 => Status::InternalFailure,
            12 => Status::Unimplemented,
            other => Status::Other(other),
        }
    }
}

#[derive(Debug, Clone)]
enum Kind {
    /// A hostcall answered something other than `Ok`.
    Host { call: &'static str, status: Status },
    /// The host lacks something this call needs (a foreign function, a hostcall). In Wasm with
    /// the in-guest crypto fallback nothing raises it today; `is_unsupported` stays for plugins.
    #[cfg_attr(
        all(target_arch = "wasm32", feature = "crypto-fallback"),
        allow(dead_code)
    )]
    Unsupported(String),
    /// The plugin's configuration is invalid.
    Config(String),
    /// Input the plugin could not make sense of (a malformed map, a bad argument).
    Invalid(String),
    /// The plugin's own error.
    Plugin(String),
}

/// An error from the SDK or the plugin. Match on it with the `is_*` predicates; print it for
/// operators with `Display`.
#[derive(Clone)]
pub struct Error {
    kind: Kind,
}

/// `Result` with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of the plugin's own, with a message for the operator's log.
    pub fn new(message: impl fmt::Display) -> Error {
        Error {
            kind: Kind::Plugin(message.to_string()),
        }
    }

    pub(crate) fn host(call: &'static str, status: Status) -> Error {
        Error {
            kind: Kind::Host { call, status },
        }
    }

    #[cfg_attr(
        all(target_arch = "wasm32", feature = "crypto-fallback"),
        allow(dead_code)
    )]
    pub(crate) fn unsupported(what: impl fmt::Display) -> Error {
        Error {
            kind: Kind::Unsupported(what.to_string()),
        }
    }

    /// A refusal of the plugin's configuration, for `Plugin::configure` (shown to the operator
    /// as "invalid configuration: ...").
    pub fn config(message: impl fmt::Display) -> Error {
        Error {
            kind: Kind::Config(message.to_string()),
        }
    }

    pub(crate) fn invalid(message: impl fmt::Display) -> Error {
        Error {
            kind: Kind::Invalid(message.to_string()),
        }
    }

    fn status(&self) -> Option<Status> {
        match self.kind {
            Kind::Host { status, .. } => Some(status),
            _ => None,
        }
    }

    /// The host has no such thing (key, queue, property, function).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(Status::NotFound)
    }

    /// A shared-data write lost a compare-and-swap race: read again and retry.
    pub fn is_cas_mismatch(&self) -> bool {
        self.status() == Some(Status::CasMismatch)
    }

    /// The host refused an argument (an invalid header, an unknown upstream, a full store).
    pub fn is_bad_argument(&self) -> bool {
        self.status() == Some(Status::BadArgument)
    }

    /// The host does not offer what the call needs.
    pub fn is_unsupported(&self) -> bool {
        matches!(self.kind, Kind::Unsupported(_)) || self.status() == Some(Status::Unimplemented)
    }

    /// The plugin's configuration was refused.
    pub fn is_config(&self) -> bool {
        matches!(self.kind, Kind::Config(_))
    }

    /// Input that could not be parsed.
    pub fn is_invalid(&self) -> bool {
        matches!(self.kind, Kind::Invalid(_))
    }

    /// Any other host status.
    pub fn is_host(&self) -> bool {
        self.status().is_some()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Host { call, status } => write!(f, "{call} answered {status:?}"),
            Kind::Unsupported(what) => write!(f, "the host does not support {what}"),
            Kind::Config(m) => write!(f, "invalid configuration: {m}"),
            Kind::Invalid(m) | Kind::Plugin(m) => f.write_str(m),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({self})")
    }
}

impl std::error::Error for Error {}
