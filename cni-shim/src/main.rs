use weft_cni::CniError;

fn main() -> std::process::ExitCode {
    let err = CniError {
        cni_version: "1.0.0".into(),
        code: 4,
        msg: "the weft CNI plugin is not implemented yet".into(),
        details: String::new(),
    };
    println!("{}", err.to_json());
    std::process::ExitCode::from(1)
}
