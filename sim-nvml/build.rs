//! Links the cdylib with `-z nodelete`: nvml-wrapper closes the library when
//! `nvmlInit` fails and reopens it on the next try, and the once-only
//! warnings and the init count must outlive that.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
