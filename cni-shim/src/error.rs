//! CNI errors: printed on stdout as `{cniVersion, code, msg, details}` with
//! a non-zero exit (logs go to stderr).

use alloc::format;
use alloc::string::String;
use core::fmt;

use serde::Serialize;

/// Standard error codes this plugin uses.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_READY: u32 = 50;
    /// A delegate failed without saying why in CNI's terms.
    pub const DELEGATE: u32 = 999;
}

/// A CNI error as the spec prints it on stdout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            cni_version: crate::CURRENT_VERSION.into(),
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The JSON text of this error, as printed on stdout.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| format!(r#"{{"code":{},"msg":"unprintable error"}}"#, self.code))
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl core::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_spec_fields_and_omits_empty_details() {
        let e = CniError::new(11, "try again");
        assert_eq!(
            e.to_json(),
            r#"{"cniVersion":"1.1.0","code":11,"msg":"try again"}"#
        );
        let d = CniError::new(7, "bad").details("why");
        assert_eq!(
            d.to_json(),
            r#"{"cniVersion":"1.1.0","code":7,"msg":"bad","details":"why"}"#
        );
    }
}
