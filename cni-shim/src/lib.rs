//! weft's CNI plugin: flannel's plugin, kept byte for byte where it matters
//! (the delegate config it saves), fixed where flannel's hurts (a DEL that
//! never loses the saved config, CHECK/STATUS/GC that do real work).
//!
//! `no_std`: the plugin binary links no C library (see `sys`); serde_json
//! works on `alloc` alone.

#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod delegate;
pub mod error;
pub mod exec;
pub mod plugin;
pub mod result;
pub mod subnet_env;
pub mod sys;

pub use error::CniError;

/// The CNI spec version this plugin reports.
pub const CURRENT_VERSION: &str = "1.1.0";

/// What kind of JSON value `v` is, for error messages ("a string", "null").
pub fn json_kind(v: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
