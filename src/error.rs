//! The library's error type. Every message is complete on its own and names the file, key
//! or value at fault; none carries a `source()` chain, so that a caller printing the error
//! with its causes (anyhow's `{:#}` at the command line) says each cause once.

use std::fmt::Display;
use std::path::{Path, PathBuf};

use crate::weights::WeightsError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A checkpoint that cannot be read, or does not fit the model.
    #[error("{0}")]
    Weights(WeightsError),
    /// A configuration value out of its range, or of the wrong kind.
    #[error("{key}: {message}")]
    Config { key: String, message: String },
    /// A file that cannot be read or written, or whose content is not what it should be.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// Anything else refused, said in full.
    #[error("{0}")]
    Message(String),
    /// What was being done when `inner` happened.
    #[error("{context}: {inner}")]
    Context { context: String, inner: Box<Error> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn msg(message: impl Display) -> Self {
        Error::Message(message.to_string())
    }

    /// A problem with the file at `path`.
    pub fn file(path: &Path, message: impl Display) -> Self {
        Error::File {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }

    /// A configuration key with a value that makes no sense.
    pub fn config(key: impl Display, message: impl Display) -> Self {
        Error::Config {
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    /// This error with what was being done when it happened.
    pub fn context(self, context: impl Display) -> Self {
        Error::Context {
            context: context.to_string(),
            inner: Box::new(self),
        }
    }

    /// The innermost error, past every added context.
    pub fn root(&self) -> &Error {
        match self {
            Error::Context { inner, .. } => inner.root(),
            other => other,
        }
    }
}

impl From<WeightsError> for Error {
    fn from(e: WeightsError) -> Self {
        Error::Weights(e)
    }
}

impl From<crate::model::ArchitectureError> for Error {
    fn from(e: crate::model::ArchitectureError) -> Self {
        Error::Message(e.0)
    }
}

impl From<crate::model::PrecisionError> for Error {
    fn from(e: crate::model::PrecisionError) -> Self {
        Error::Message(e.to_string())
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error::Message(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error::Message(message.to_string())
    }
}

/// Foreign errors become messages: their text is all a user can act on.
macro_rules! from_display {
    ($($t:ty),* $(,)?) => {
        $(impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Message(e.to_string())
            }
        })*
    };
}

from_display!(
    std::io::Error,
    std::fmt::Error,
    serde_json::Error,
    image::ImageError,
    toml::de::Error,
    toml::ser::Error,
    safetensors::SafeTensorError,
    std::num::ParseIntError,
    std::num::ParseFloatError,
    std::num::TryFromIntError,
    burn::store::RecordError,
    burn::store::burn_pack::Error,
    zip::result::ZipError,
    ureq::Error,
);

/// A numeric setting checked against its valid range (`range` in words, e.g. "> 0" or
/// "in [0, 1)"): the error names the key, the value and the range.
pub fn check_setting(key: &str, value: impl Display, valid: bool, range: &str) -> Result<()> {
    if valid {
        Ok(())
    } else {
        Err(Error::config(
            key,
            format!("{value} is out of range: must be {range}"),
        ))
    }
}

/// Weights (or probabilities) that must each be finite and >= 0 and not all 0; `all_zero`
/// says why the last matters.
pub fn check_weights(weights: &[(&str, f64)], all_zero: &str) -> Result<()> {
    for &(key, value) in weights {
        check_setting(key, value, value >= 0.0 && value.is_finite(), ">= 0")?;
    }
    if weights.iter().all(|(_, v)| *v == 0.0) {
        let keys: Vec<&str> = weights.iter().map(|(k, _)| *k).collect();
        return Err(Error::msg(format!(
            "{} are all 0: {all_zero}",
            keys.join(", ")
        )));
    }
    Ok(())
}

/// `.context(..)` and `.with_context(|| ..)` on results and options, as anyhow has them.
pub trait Context<T> {
    fn context(self, context: impl Display) -> Result<T>;
    fn with_context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl Display) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: context.to_string(),
            inner: Box::new(e.into()),
        })
    }

    fn with_context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| Error::Context {
            context: context().to_string(),
            inner: Box::new(e.into()),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, context: impl Display) -> Result<T> {
        self.ok_or_else(|| Error::Message(context.to_string()))
    }

    fn with_context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.ok_or_else(|| Error::Message(context().to_string()))
    }
}

/// Returns early with an [`Error::Message`] built like `format!`.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::Message(format!($($arg)*)))
    };
}

/// An [`Error::Message`] built like `format!`.
macro_rules! err {
    ($($arg:tt)*) => {
        $crate::error::Error::Message(format!($($arg)*))
    };
}

pub(crate) use {bail, err};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_say_each_cause_once() {
        let io = std::fs::read("/nonexistent/samtune-file").context("reading the config");
        let err = io.unwrap_err();
        let text = format!("{err}");
        assert!(text.starts_with("reading the config: "), "{text}");
        assert_eq!(text.matches("No such file").count(), 1, "{text}");
        // no source chain: printing with causes adds nothing
        assert!(std::error::Error::source(&err).is_none());
        let wrapped: Result<()> = Err(err).context("loading");
        assert!(matches!(wrapped.unwrap_err().root(), Error::Message(_)));
    }

    #[test]
    fn config_errors_name_key_and_value() {
        let e = Error::config("train.lr", "must be > 0, got -1");
        assert_eq!(e.to_string(), "train.lr: must be > 0, got -1");
    }
}
