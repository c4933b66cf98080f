//! `lessor completions SHELL`: the shell's completion script, generated
//! from the clap definitions that parse the command line, so a new
//! subcommand or flag completes as soon as it exists. The Debian package
//! ships the bash, zsh and fish scripts (scripts/package writes them).

use clap::CommandFactory;
use clap_complete::Shell;

/// The completion script for `shell`.
pub(super) fn script(shell: Shell) -> String {
    let mut command = super::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "lessor", &mut script);
    String::from_utf8(script).expect("clap_complete writes UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_completes_the_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = script(shell);
            for name in ["serve", "creds", "lease", "rotate-root", "config", "completions"] {
                assert!(script.contains(name), "{shell}: no `{name}` in\n{script}");
            }
        }
    }
}
