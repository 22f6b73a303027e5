//! The plugin brings its own `_start` and links nothing else: no C start
//! files, no C library, not position-independent (nothing would relocate it).
fn main() {
    for arg in ["-nostartfiles", "-nostdlib", "-static", "-no-pie"] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
