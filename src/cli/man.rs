//! The manual pages, made from what the program itself reads so they
//! cannot drift from it: `lessor(1)` and one page per subcommand
//! (`lessor-serve(1)`, `lessor-lease-list(1)`, …) from the clap
//! definitions by clap_mangen, and `lessor.toml(5)` from the config's JSON
//! Schema ([`super::config_page`]). `lessor man --out DIR` (hidden) writes
//! them all; scripts/package runs it for the Debian package.

use std::io;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use roff::{bold, italic, roman, Roff};

/// The manual every page names in its footer.
pub(super) const MANUAL: &str = "lessor manual";
/// `.TH`'s date: none (the pages change with the code, not on a day). An
/// empty argument must be written `""`, or the ones after it would move
/// into its place.
pub(super) const NO_DATE: &str = "\"\"";

/// Writes every page into `dir` (made when missing) and returns their
/// paths, `lessor.1` first.
pub(super) fn write_all(dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (name, page) in pages() {
        let path = dir.join(name);
        std::fs::write(&path, page)?;
        written.push(path);
    }
    Ok(written)
}

/// Every page as (file name, roff source).
pub(super) fn pages() -> Vec<(String, String)> {
    // The way clap_mangen::generate_to walks the tree, with our own pages.
    let mut root = super::Cli::command().disable_help_subcommand(true);
    root.build();
    let mut pages = Vec::new();
    command_pages(&root, &mut pages);
    let schema = crate::config::json_schema();
    let schema = serde_json::from_str(&schema).expect("the config schema is JSON");
    pages.push(("lessor.toml.5".to_string(), super::config_page::render(&schema)));
    pages
}

fn command_pages(command: &clap::Command, pages: &mut Vec<(String, String)>) {
    let name = command.get_display_name().unwrap_or_else(|| command.get_name()).to_string();
    pages.push((format!("{name}.1"), command_page(command.clone(), &name)));
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        command_pages(sub, pages);
    }
}

/// One command's page: clap_mangen's sections, then ours (the exit codes,
/// environment and files on `lessor(1)`; SEE ALSO everywhere).
fn command_page(command: clap::Command, name: &str) -> String {
    let mut page = Vec::new();
    clap_mangen::Man::new(command)
        .date(NO_DATE)
        .manual(MANUAL)
        .render(&mut page)
        .expect("writing to a Vec never fails");
    let mut page = String::from_utf8(page).expect("clap_mangen writes UTF-8");
    let mut more = Roff::new();
    if name == "lessor" {
        more.control("SH", ["EXIT STATUS"]);
        for (code, meaning) in [
            ("0", "Success."),
            ("1", "The daemon refused, or the command failed; the reason is printed on standard error."),
            ("2", "The daemon could not be reached, or the command line was wrong."),
        ] {
            more.control("TP", []).text([bold(code)]).text([roman(meaning)]);
        }
        more.control("SH", ["ENVIRONMENT"]);
        more.control("TP", [])
            .text([bold("LESSOR_SOCKET")])
            .text([roman("The daemon's socket, as --socket; default /run/lessor/lessor.sock.")]);
        more.control("SH", ["FILES"]);
        for (file, what) in [
            ("/etc/lessor/lessor.toml", "The daemon's configuration; see lessor.toml(5)."),
            ("/run/lessor/lessor.sock", "The API socket every command but serve talks to."),
            ("/run/lessor/credentials.sock", "The socket for systemd's LoadCredential=."),
            ("/var/lib/lessor", "The lease store (SQLite), mode 0700."),
            (
                "/usr/lib/systemd/system/lessor.service",
                "The daemon as a systemd service, with lessor.socket.",
            ),
        ] {
            more.control("TP", []).text([italic(file)]).text([roman(what)]);
        }
    }
    more.control("SH", ["SEE ALSO"]);
    let mut see_also = vec![];
    if let Some((parent, _)) = name.rsplit_once('-') {
        see_also.push(format!("{parent}(1)"));
    }
    see_also.push("lessor.toml(5)".to_string());
    if name == "lessor" || name == "lessor-serve" {
        see_also.extend(["systemd.exec(5)".to_string(), "systemd.socket(5)".to_string()]);
    }
    more.text([roman(see_also.join(", "))]);
    page.push_str(&more.to_roff());
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_page_per_visible_command_and_the_config_page() {
        let names: Vec<String> = pages().into_iter().map(|(name, _)| name).collect();
        for name in
            ["lessor.1", "lessor-serve.1", "lessor-lease.1", "lessor-lease-list.1", "lessor-completions.1"]
        {
            assert!(names.contains(&name.to_string()), "no {name} in {names:?}");
        }
        assert!(names.contains(&"lessor.toml.5".to_string()));
        assert!(!names.iter().any(|n| n.starts_with("lessor-man") || n.contains("-help")), "{names:?}");
    }

    #[test]
    fn a_page_has_the_sections_of_a_man_page() {
        let pages = pages();
        let (_, root) = pages.iter().find(|(name, _)| name == "lessor.1").unwrap();
        let title = format!(".TH lessor 1 \"\" \"lessor {}\" \"lessor manual\"", env!("CARGO_PKG_VERSION"));
        for macro_line in [&title, ".SH NAME", ".SH SYNOPSIS", ".SH \"EXIT STATUS\"", ".SH \"SEE ALSO\""] {
            assert!(root.contains(macro_line), "no `{macro_line}` in\n{root}");
        }
        let (_, serve) = pages.iter().find(|(name, _)| name == "lessor-serve.1").unwrap();
        assert!(serve.contains("lessor(1), lessor.toml(5)"), "{serve}");
    }
}
