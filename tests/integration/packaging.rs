//! lessor as an installed system service: the systemd units
//! (`packaging/systemd/`) pass `systemd-analyze verify` and score at most
//! 1.5 in `systemd-analyze security`; the completions and man pages are
//! complete and render cleanly; the shipped config passes `config check`;
//! the library crates package with what they build from; and the Debian
//! package is lintian-clean, installs with `dpkg -i` (binary, units, man
//! pages, completions, the lessor user, a 0700 state directory) and
//! purges without a trace.
//!
//! The package test installs on the machine it runs on (the CI machine,
//! as root): it holds a lock so two runs never overlap, refuses to touch a
//! lessor that it did not install itself, and purges what it installed
//! even when an assertion fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const LESSOR: &str = env!("CARGO_BIN_EXE_lessor");
/// The highest `systemd-analyze security` exposure the service may have.
const MAX_EXPOSURE: f64 = 1.5;
const UNITS: [&str; 3] = ["lessor.service", "lessor.socket", "lessor-credentials.socket"];

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The visible subcommands, as `lessor --help` lists them.
fn subcommands() -> Vec<String> {
    let help = ok(LESSOR, &["--help"]);
    let commands = help.split("Commands:").nth(1).expect("a Commands: section");
    let names: Vec<String> = commands
        .lines()
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect();
    assert!(names.len() > 10 && names.contains(&"serve".to_string()), "{names:?}");
    names
}

// ---------------------------------------------------------------------------
// systemd units
// ---------------------------------------------------------------------------

fn unit_text(name: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join("packaging/systemd").join(name)).unwrap()
}

/// The units in a temporary directory, the service's `ExecStart=` pointed
/// at this build's binary: `verify` checks that the program exists, and
/// /usr/bin/lessor does only once the package is installed (where the
/// package test verifies the installed units as they are).
fn units_with_this_binary() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for unit in UNITS {
        let text = unit_text(unit).replace("ExecStart=/usr/bin/lessor ", &format!("ExecStart={LESSOR} "));
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    dir
}

fn verify(paths: &[PathBuf], man: bool) {
    let mut args = vec!["verify".to_string(), format!("--man={}", if man { "yes" } else { "no" })];
    args.extend(paths.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run("systemd-analyze", &args);
    let stderr = text(&out.stderr);
    // Warnings about other units (the host's) are not ours to fix; any
    // line naming one of ours is.
    let ours: Vec<&str> = stderr.lines().filter(|l| UNITS.iter().any(|u| l.contains(u))).collect();
    assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify: {}\n{stderr}", out.status);
}

/// `systemd-analyze security --offline=true`'s overall exposure, and its report.
fn exposure(service: &Path) -> (f64, String) {
    let out = run("systemd-analyze", &["security", "--offline=true", &service.display().to_string()]);
    let report = text(&out.stdout);
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level for lessor.service"))
        .unwrap_or_else(|| panic!("no overall exposure in\n{report}{}", text(&out.stderr)));
    let score =
        line.split(": ").nth(1).and_then(|s| s.split_whitespace().next()).and_then(|s| s.parse().ok());
    (score.unwrap_or_else(|| panic!("cannot read the score in `{line}`")), report)
}

#[test]
fn the_units_verify_and_the_service_scores_at_most_1_5() {
    let dir = units_with_this_binary();
    let paths: Vec<PathBuf> = UNITS.iter().map(|u| dir.path().join(u)).collect();
    verify(&paths, false);
    let (score, report) = exposure(&paths[0]);
    assert!(score <= MAX_EXPOSURE, "exposure {score} > {MAX_EXPOSURE}:\n{report}");

    // What the issue asks for by name stays, whatever else moves the score.
    let service = unit_text("lessor.service");
    for line in [
        "Type=notify",
        "ExecStart=/usr/bin/lessor serve --config /etc/lessor/lessor.toml",
        "Sockets=lessor.socket lessor-credentials.socket",
        "User=lessor",
        "Group=lessor",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/lessor",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "StateDirectory=lessor",
        "StateDirectoryMode=0700",
        "RuntimeDirectory=lessor",
        "RuntimeDirectoryPreserve=yes",
    ] {
        assert!(service.lines().any(|l| l == line), "lessor.service lacks `{line}`");
    }
    // Settings that would blind the daemon to its callers (see the unit's comments).
    for line in ["PrivateUsers=yes", "ProtectProc=invisible", "ProtectProc=noaccess"] {
        assert!(!service.lines().any(|l| l == line), "lessor.service has `{line}`");
    }
    let api = unit_text("lessor.socket");
    for line in ["ListenStream=/run/lessor/lessor.sock", "FileDescriptorName=api", "SocketMode=0666"] {
        assert!(api.lines().any(|l| l == line), "lessor.socket lacks `{line}`");
    }
    let credentials = unit_text("lessor-credentials.socket");
    for line in [
        "ListenStream=/run/lessor/credentials.sock",
        "FileDescriptorName=credentials",
        "SocketMode=0600",
        "Service=lessor.service",
    ] {
        assert!(credentials.lines().any(|l| l == line), "lessor-credentials.socket lacks `{line}`");
    }
}

#[test]
fn a_weakened_service_scores_worse() {
    // The score test can fail: the same unit without its sandbox is far
    // above the limit.
    let dir = units_with_this_binary();
    let path = dir.path().join("lessor.service");
    let weak: String = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("Protect") && !l.starts_with("SystemCall") && !l.starts_with("Capability"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&path, weak).unwrap();
    let (score, _) = exposure(&path);
    assert!(score > MAX_EXPOSURE, "{score}");
}

// ---------------------------------------------------------------------------
// Completions and man pages
// ---------------------------------------------------------------------------

#[test]
fn completions_name_every_subcommand() {
    let subcommands = subcommands();
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(LESSOR, &["completions", shell]);
        assert!(script.len() > 1000, "{shell}: {script}");
        for name in &subcommands {
            assert!(script.contains(name.as_str()), "{shell} completion lacks `{name}`");
        }
    }
    let out = run(LESSOR, &["completions", "tcsh"]);
    assert!(!out.status.success());
}

/// Renders a page as `man` would show it, and returns what the formatter
/// complained about (lintian runs the same command on every page).
fn render_warnings(page: &Path) -> String {
    let page = page.display().to_string();
    if Path::new("/usr/bin/man").exists() {
        let out = Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", &page])
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        assert!(out.status.success() && !out.stdout.is_empty(), "man -l {page}: {}", text(&out.stderr));
        return text(&out.stderr);
    }
    if Path::new("/usr/bin/mandoc").exists() {
        let out = run("mandoc", &["-T", "lint", "-W", "warning", &page]);
        return text(&out.stdout) + &text(&out.stderr);
    }
    let out = run("groff", &["-man", "-Tutf8", "-ww", "-z", &page]);
    text(&out.stderr)
}

#[test]
fn man_pages_cover_every_command_and_render_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let listed = ok(LESSOR, &["man", "--out", &dir.path().display().to_string()]);
    let files: BTreeSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(listed.lines().count(), files.len(), "{listed}");
    for expected in ["lessor.1", "lessor.toml.5", "lessor-lease-list.1", "lessor-config-check.1"] {
        assert!(files.contains(expected), "no {expected} in {files:?}");
    }
    for name in subcommands() {
        assert!(files.contains(&format!("lessor-{name}.1")), "no page for `lessor {name}` in {files:?}");
    }
    for file in &files {
        let path = dir.path().join(file);
        let source = std::fs::read_to_string(&path).unwrap();
        assert!(
            source.contains("\n.TH ") && source.contains("\n.SH NAME\n"),
            "{file} is not a man page:\n{source}"
        );
        let warnings = render_warnings(&path);
        assert!(warnings.trim().is_empty(), "{file}: {warnings}");
    }
}

#[test]
fn the_config_page_documents_every_key_of_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    ok(LESSOR, &["man", "--out", &dir.path().display().to_string()]);
    let page = std::fs::read_to_string(dir.path().join("lessor.toml.5")).unwrap();
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join("schemas/config.schema.json")).unwrap(),
    )
    .unwrap();
    for key in schema["properties"].as_object().unwrap().keys() {
        let heading = [format!(".SH [{key}]"), format!(".SH [{key}.NAME]"), format!(".SH [[{key}]]")];
        assert!(
            heading.iter().any(|h| page.contains(h.as_str())),
            "lessor.toml(5) has no section for `{key}`"
        );
    }
    // And every key of every table, by name, with its description's start.
    for (name, definition) in schema["definitions"].as_object().unwrap() {
        for (key, property) in definition["properties"].as_object().into_iter().flatten() {
            let tag = format!("\\fB{}\\fR (", key.replace('-', "\\-"));
            assert!(page.contains(&tag), "lessor.toml(5) lacks `{key}` of {name}");
            // Its first run of plain words, which roff writes unchanged.
            let description = property["description"].as_str().unwrap_or_default();
            let mut runs = description.split(|c: char| !(c.is_alphanumeric() || c == ' ')).map(str::trim);
            let Some(words) = runs.find(|run| run.len() >= 4) else { continue };
            assert!(
                page.contains(words),
                "lessor.toml(5) lacks the description of `{key}` of {name} ({words:?})"
            );
        }
    }
}

#[test]
fn the_shipped_config_passes_config_check() {
    let path = Path::new(ROOT).join("packaging/lessor.toml");
    let out = run(LESSOR, &["config", "check", &path.display().to_string()]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
}

// ---------------------------------------------------------------------------
// crates.io
// ---------------------------------------------------------------------------

#[test]
fn the_library_crates_package_with_what_they_build_from() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for (krate, needs) in [
        ("lessor-plugin", &["build.rs", "README.md", "proto/lessor/plugin/v1/plugin.proto"][..]),
        ("lessor-client", &["README.md"][..]),
    ] {
        let out = Command::new(&cargo)
            .args(["package", "--list", "--allow-dirty", "--offline", "-p", krate])
            .current_dir(ROOT)
            .output()
            .unwrap();
        let listing = text(&out.stdout);
        assert!(out.status.success(), "cargo package --list -p {krate}: {}", text(&out.stderr));
        for file in needs {
            assert!(listing.lines().any(|l| l == *file), "{krate}'s package lacks {file}:\n{listing}");
        }
    }
    // The packaged proto is the protocol itself, not a copy that may drift.
    let linked = Path::new(ROOT).join("plugins/sdk/proto/lessor/plugin/v1/plugin.proto");
    let schema = Path::new(ROOT).join("schemas/proto/lessor/plugin/v1/plugin.proto");
    assert_eq!(std::fs::canonicalize(linked).unwrap(), std::fs::canonicalize(schema).unwrap());
}

// ---------------------------------------------------------------------------
// The Debian package
// ---------------------------------------------------------------------------

/// Held for the whole package test: one install at a time on the machine.
const LOCK: &str = "/var/tmp/lessor-packaging-test.lock";
/// Present while this test has lessor installed: a run that was killed
/// leaves it, and the next run may purge what that one installed.
const MARKER: &str = "/var/tmp/lessor-packaging-test.installed";

/// What the package leaves on the machine while installed.
const INSTALLED: &[&str] = &[
    "/usr/bin/lessor",
    "/usr/lib/systemd/system/lessor.service",
    "/usr/lib/systemd/system/lessor.socket",
    "/usr/lib/systemd/system/lessor-credentials.socket",
    "/etc/lessor/lessor.toml",
    "/usr/share/doc/lessor/copyright",
    "/usr/share/man/man1/lessor.1.gz",
    "/usr/share/man/man1/lessor-serve.1.gz",
    "/usr/share/man/man5/lessor.toml.5.gz",
    "/usr/share/bash-completion/completions/lessor",
    "/usr/share/zsh/vendor-completions/_lessor",
    "/usr/share/fish/vendor_completions.d/lessor.fish",
    "/var/lib/lessor",
    "/etc/systemd/system/multi-user.target.wants/lessor.service",
    "/etc/systemd/system/sockets.target.wants/lessor.socket",
    "/etc/systemd/system/sockets.target.wants/lessor-credentials.socket",
];

fn package_installed() -> bool {
    let out = run("dpkg-query", &["-W", "-f", "${db:Status-Status}", "lessor"]);
    // Unknown to dpkg (an error) or `not-installed`: gone; `installed`,
    // `config-files` and every half-way state: there.
    out.status.success() && !matches!(text(&out.stdout).trim(), "" | "not-installed")
}

fn account_exists(database: &str) -> bool {
    run("getent", &[database, "lessor"]).status.success()
}

fn purge() -> Output {
    Command::new("dpkg")
        .args(["--purge", "lessor"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap()
}

/// Purges lessor when dropped (an assertion that fails mid-test included),
/// then forgets the marker.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        if package_installed() {
            let out = purge();
            if !out.status.success() {
                eprintln!("dpkg --purge lessor: {}{}", text(&out.stdout), text(&out.stderr));
                return;
            }
        }
        let _ = std::fs::remove_file(MARKER);
    }
}

fn lock() -> std::fs::File {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(LOCK).unwrap();
    // SAFETY: a valid open descriptor; flock only takes a lock on it.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {LOCK}: {}", std::io::Error::last_os_error());
    file
}

/// Where `systemd-analyze verify` is as on a real host: the installed
/// units, /usr/bin/lessor and the man pages their Documentation= names.
fn verify_installed() {
    let paths: Vec<PathBuf> = UNITS.iter().map(|u| Path::new("/usr/lib/systemd/system").join(u)).collect();
    verify(&paths, true);
}

#[test]
fn the_debian_changelog_is_at_this_version() {
    let changelog = std::fs::read_to_string(Path::new(ROOT).join("packaging/debian/changelog")).unwrap();
    let first = changelog.lines().next().unwrap_or_default();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        first.starts_with(&format!("lessor ({version}-1) ")),
        "packaging/debian/changelog starts `{first}`, not at {version}-1"
    );
}

#[test]
fn the_debian_package_is_clean_installs_and_purges() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the package test installs with dpkg: run it as root (scripts/test)"
    );
    let _lock = lock();
    if Path::new(MARKER).exists() {
        // A run of this test was killed with lessor installed.
        drop(Installed);
    }
    assert!(
        !package_installed(),
        "lessor is installed on this machine, and not by this test: not touching it"
    );
    assert!(
        !account_exists("passwd") && !account_exists("group"),
        "this machine has a lessor user or group already"
    );
    for path in INSTALLED {
        assert!(std::fs::symlink_metadata(path).is_err(), "{path} exists before the install");
    }

    // Packaged from this build's binary (no release build in CI).
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(Path::new(ROOT).join("scripts/package"))
        .args(["--binary", LESSOR, "--output", &out_dir.path().display().to_string(), "--", "--fast"])
        .output()
        .unwrap();
    assert!(out.status.success(), "scripts/package: {}\n{}", out.status, text(&out.stderr));
    let stdout = text(&out.stdout);
    let deb = stdout.lines().last().map(str::trim).unwrap_or_default().to_string();
    assert!(deb.ends_with(".deb") && Path::new(&deb).is_file(), "scripts/package printed {stdout}");

    let lintian = run("lintian", &["--fail-on", "error,warning", "--tag-display-limit", "0", &deb]);
    let findings = text(&lintian.stdout);
    assert!(
        lintian.status.success() && !findings.lines().any(|l| l.starts_with("E:") || l.starts_with("W:")),
        "lintian {deb}: {}\n{findings}{}",
        lintian.status,
        text(&lintian.stderr)
    );

    std::fs::write(MARKER, &deb).unwrap();
    let installed = Installed;
    let out =
        Command::new("dpkg").args(["-i", &deb]).env("DEBIAN_FRONTEND", "noninteractive").output().unwrap();
    assert!(out.status.success(), "dpkg -i: {}{}", text(&out.stdout), text(&out.stderr));

    assert_eq!(ok("/usr/bin/lessor", &["--version"]).trim(), format!("lessor {}", env!("CARGO_PKG_VERSION")));
    assert_eq!(ok("man", &["-w", "lessor"]).trim(), "/usr/share/man/man1/lessor.1.gz");
    assert_eq!(ok("man", &["-w", "5", "lessor.toml"]).trim(), "/usr/share/man/man5/lessor.toml.5.gz");
    assert_eq!(ok("man", &["-w", "lessor-serve"]).trim(), "/usr/share/man/man1/lessor-serve.1.gz");
    for path in INSTALLED {
        assert!(std::fs::symlink_metadata(path).is_ok(), "{path} is not installed");
    }
    for completion in INSTALLED.iter().filter(|p| p.contains("completion")) {
        let script = std::fs::read_to_string(completion).unwrap();
        assert!(script.contains("rotate-root"), "{completion}:\n{script}");
    }
    let user = ok("getent", &["passwd", "lessor"]);
    assert!(user.trim().ends_with(":/var/lib/lessor:/usr/sbin/nologin"), "{user}");
    assert!(account_exists("group"));
    let state = ok("stat", &["-c", "%U:%G %a", "/var/lib/lessor"]);
    assert_eq!(state.trim(), "lessor:lessor 700");
    let conffiles = ok("dpkg-query", &["-W", "-f", "${Conffiles}", "lessor"]);
    assert!(conffiles.contains("/etc/lessor/lessor.toml"), "{conffiles}");
    ok("/usr/bin/lessor", &["config", "check", "/etc/lessor/lessor.toml"]);
    verify_installed();

    let out = purge();
    assert!(out.status.success(), "dpkg --purge: {}{}", text(&out.stdout), text(&out.stderr));
    drop(installed);
    assert!(!package_installed());
    for path in INSTALLED.iter().chain(&["/etc/lessor", "/usr/share/doc/lessor"]) {
        assert!(std::fs::symlink_metadata(path).is_err(), "{path} is left after the purge");
    }
    assert!(
        !account_exists("passwd") && !account_exists("group"),
        "the lessor user or group is left after the purge"
    );
    for state in ["/var/lib/systemd/deb-systemd-helper-enabled", "/var/lib/systemd/deb-systemd-helper-masked"]
    {
        let left = Command::new("grep").args(["-rl", "lessor", state]).output().unwrap();
        assert!(
            text(&left.stdout).trim().is_empty(),
            "deb-systemd-helper state left: {}",
            text(&left.stdout)
        );
    }
    assert!(!Path::new(MARKER).exists());
}
