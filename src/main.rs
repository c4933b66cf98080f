//! The `lessor` binary: everything happens in [`lessor::cli`].

fn main() -> std::process::ExitCode {
    lessor::cli::run()
}
