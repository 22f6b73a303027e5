//! weft's CNI plugin library.
//!
//! The plugin itself (ADD/DEL/CHECK/STATUS/GC delegating to `bridge`) is built
//! in the issue "The `weft` CNI plugin and its install"; for now this crate
//! only knows the error shape every CNI answer must take.

use serde::Serialize;

/// A CNI error as the spec prints it on stdout: `{cniVersion, code, msg, details}`.
#[derive(Debug, Serialize)]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// The JSON text of this error, as printed on stdout.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| format!(r#"{{"code":{},"msg":"unprintable error"}}"#, self.code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_spec_fields_and_omits_empty_details() {
        let e = CniError {
            cni_version: "1.0.0".into(),
            code: 11,
            msg: "try again".into(),
            details: String::new(),
        };
        assert_eq!(
            e.to_json(),
            r#"{"cniVersion":"1.0.0","code":11,"msg":"try again"}"#
        );
    }
}
