//! The `weft` CNI plugin binary: read the environment and stdin, run the
//! command, print the result or a CNI error JSON. It never panics visibly:
//! a bug still answers with an error JSON (code 999).

use std::io::Read;
use std::process::ExitCode;

use weft_cni::error::code;
use weft_cni::exec::CniEnv;
use weft_cni::{CniError, plugin};

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("weft: internal error: {info}");
    }));
    let outcome = std::panic::catch_unwind(run).unwrap_or_else(|_| {
        Err(CniError::new(
            code::DELEGATE,
            "internal error in the weft plugin (see stderr)",
        ))
    });
    match outcome {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: {e}");
            println!("{}", e.to_json());
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<Option<String>, CniError> {
    if std::env::var_os("CNI_COMMAND").is_none() {
        eprintln!(
            "CNI plugin weft version {}\nCNI protocol versions supported: {}",
            env!("CARGO_PKG_VERSION"),
            plugin::SUPPORTED_VERSIONS.join(", ")
        );
        return Ok(None);
    }
    let env = CniEnv::from_vars(|k| std::env::var(k).ok())?;
    let mut stdin = Vec::new();
    std::io::stdin()
        .take(plugin::MAX_INPUT as u64 + 1)
        .read_to_end(&mut stdin)
        .map_err(|e| CniError::new(code::IO, format!("reading stdin: {e}")))?;
    plugin::run(&env, &stdin)
}
