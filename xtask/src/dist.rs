//! `cargo xtask dist [--arch amd64|arm64]`: a Debian package of mptcp-user
//! (target/debian/), with the systemd units, sample configs, sysctl settings, shell
//! completions and man pages; for arm64 cross-built and run under qemu-user
//! ([`crate::cross`]).
//!
//! The package is laid out in a staging tree and built with dpkg-deb, which every
//! Debian machine has: no packaging tool to install. Completions and man pages come
//! from the binary itself (`mptcp-user completions`, `mptcp-user manpages`), so they
//! say exactly what its flags are. The units are checked with `systemd-analyze verify`
//! against the staged tree where systemd-analyze exists.
//!
//! What Debian's policy asks of every package, and lintian checks: a copyright file
//! (dist/debian/copyright, machine-readable), a changelog (dist/debian/changelog,
//! written by hand; the build checks that it names this version and maintainer) and a
//! stripped binary. The version has no Debian revision, so this is a native package
//! and its changelog is changelog.gz, not changelog.Debian.gz.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::{
    cmd,
    cross::{self, Arch},
};

/// The package's name.
const PACKAGE: &str = "mptcp-user";
/// The units, in dist/systemd.
const UNITS: [&str; 2] = ["mptcp-gateway.service", "mptcp-converter.service"];
/// Where the sample configs go; the units read them there.
const CONFIG_DIR: &str = "etc/mptcp-gateway";
/// The package's maintainer, in the control file and the changelog.
const MAINTAINER: &str = "MPTCP gateway developers <mptcp-gateway@example.org>";

/// Options of `cargo xtask dist`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// The package's architecture: amd64 (this machine's), or arm64 (cross-built with
    /// Debian's Rust, checked under qemu-user).
    #[arg(long, value_enum, default_value = "amd64")]
    pub arch: Arch,
}

/// Builds the package; returns its path.
pub fn run(options: &Options) -> anyhow::Result<PathBuf> {
    let arch = options.arch;
    let built = cross::build_release(arch)?;
    let root = cmd::workspace_root();
    let staging = root.join("target/debian/staging");
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    let architecture = arch.debian_name();

    // The packaged binary is stripped; everything below runs that one (under qemu-user
    // for arm64), so it is the one shown to work. (The tests keep the unstripped build,
    // for backtraces.)
    let binary = staging.join("usr/bin/mptcp-user");
    install(&built, &binary, 0o755)?;
    strip(&binary, &root, arch)?;
    let version = version(&binary, arch)?;
    for unit in UNITS {
        install(
            &root.join("dist/systemd").join(unit),
            &staging.join("usr/lib/systemd/system").join(unit),
            0o644,
        )?;
    }
    install(
        &root.join("dist/sysctl.d/60-mptcp-user.conf"),
        &staging.join("usr/lib/sysctl.d/60-mptcp-user.conf"),
        0o644,
    )?;
    let mut conffiles = Vec::new();
    for config in ["gateway.toml", "converter.toml"] {
        install(
            &root.join("config").join(config),
            &staging.join(CONFIG_DIR).join(config),
            0o644,
        )?;
        conffiles.push(format!("/{CONFIG_DIR}/{config}\n"));
    }
    // The README and docs/ as laid out in the repository, so that the README's links
    // and pictures hold in /usr/share/doc too.
    let mut documents = vec![PathBuf::from("README.md")];
    for entry in fs::read_dir(root.join("docs"))? {
        let path = entry?.path();
        // The pictures too (the status page's), which the docs show.
        if path
            .extension()
            .is_some_and(|extension| extension == "md" || extension == "png")
        {
            documents.push(Path::new("docs").join(path.file_name().context("a nameless doc")?));
        }
    }
    for document in documents {
        install(
            &root.join(&document),
            &staging.join("usr/share/doc").join(PACKAGE).join(&document),
            0o644,
        )?;
    }
    let doc = staging.join("usr/share/doc").join(PACKAGE);
    install(
        &root.join("dist/debian/copyright"),
        &doc.join("copyright"),
        0o644,
    )?;
    changelog(&root.join("dist/debian/changelog"), &version, &doc)?;
    completions(&binary, arch, &staging)?;
    man_pages(&binary, arch, &staging)?;

    let debian = staging.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    fs::write(debian.join("conffiles"), conffiles.concat())?;
    fs::write(debian.join("md5sums"), md5sums(&staging)?)?;
    fs::write(
        debian.join("control"),
        control(&version, architecture, &staging)?,
    )?;
    verify_units(&staging)?;

    let package = root
        .join("target/debian")
        .join(format!("{PACKAGE}_{version}_{architecture}.deb"));
    cmd::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&staging)
            .arg(&package),
    )?;
    println!("{}", package.display());
    Ok(package)
}

/// The package version: the crate's, from `mptcp-user --version` ("mptcp-user 0.1.0
/// (commit abc)").
fn version(binary: &Path, arch: Arch) -> anyhow::Result<String> {
    let said = output(arch.command(binary).arg("--version"))?;
    said.split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("no version in {said:?}"))
}

/// Copies `from` to `to` (parents made) with `mode`.
fn install(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    fs::create_dir_all(to.parent().context("no parent")?)?;
    fs::copy(from, to).with_context(|| format!("cannot copy {}", from.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Strips `binary` as Debian's dh_strip does (symbols not needed for relocation, and
/// the compiler's notes), then checks that the eBPF object came through unchanged: it
/// is data in .rodata (`include_bytes!`), which stripping leaves alone.
fn strip(binary: &Path, root: &Path, arch: Arch) -> anyhow::Result<()> {
    cmd::run(
        Command::new(arch.strip())
            .args(["--remove-section=.comment", "--remove-section=.note"])
            .arg("--strip-unneeded")
            .arg(binary),
    )?;
    // Where mptcp-user's build.rs builds it (`target/ebpf`).
    let object = root.join("target/ebpf/bpfel-unknown-none/release/mptcp-ebpf");
    let object = fs::read(&object).with_context(|| format!("cannot read {}", object.display()))?;
    anyhow::ensure!(!object.is_empty(), "the eBPF object is empty");
    let stripped = fs::read(binary)?;
    anyhow::ensure!(
        stripped
            .windows(object.len())
            .any(|window| window == object.as_slice()),
        "the stripped {} lacks the eBPF object",
        binary.display()
    );
    Ok(())
}

/// The changelog (`changelog`, compressed into `doc`), after checking that its latest
/// entry is this version's and names the control file's maintainer.
fn changelog(changelog: &Path, version: &str, doc: &Path) -> anyhow::Result<()> {
    let text = fs::read_to_string(changelog)
        .with_context(|| format!("cannot read {}", changelog.display()))?;
    let heading = format!("{PACKAGE} ({version}) ");
    anyhow::ensure!(
        text.starts_with(&heading),
        "{} does not begin with an entry for {version} (\"{heading}...\")",
        changelog.display()
    );
    let trailer = text
        .lines()
        .find(|line| line.starts_with(" -- "))
        .with_context(|| format!("{}: no \" -- \" line", changelog.display()))?;
    anyhow::ensure!(
        trailer.starts_with(&format!(" -- {MAINTAINER}  ")),
        "{}: the latest entry is not signed by {MAINTAINER}",
        changelog.display()
    );
    let compressed = Command::new("gzip")
        .args(["-9n", "--stdout"])
        .arg(changelog)
        .output()
        .context("cannot run gzip")?;
    anyhow::ensure!(compressed.status.success(), "gzip {}", changelog.display());
    let path = doc.join("changelog.gz");
    fs::create_dir_all(doc)?;
    fs::write(&path, compressed.stdout)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// The completion scripts, where bash, zsh and fish look for those of packages.
fn completions(binary: &Path, arch: Arch, staging: &Path) -> anyhow::Result<()> {
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/mptcp-user"),
        ("zsh", "usr/share/zsh/vendor-completions/_mptcp-user"),
        (
            "fish",
            "usr/share/fish/vendor_completions.d/mptcp-user.fish",
        ),
    ] {
        let script = output(arch.command(binary).args(["completions", shell]))?;
        let path = staging.join(path);
        fs::create_dir_all(path.parent().context("no parent")?)?;
        fs::write(&path, script + "\n")?;
    }
    Ok(())
}

/// The man pages, one per command, compressed as Debian's policy asks.
fn man_pages(binary: &Path, arch: Arch, staging: &Path) -> anyhow::Result<()> {
    let dir = staging.join("usr/share/man/man1");
    cmd::run(arch.command(binary).arg("manpages").arg(&dir))?;
    for page in fs::read_dir(&dir)? {
        cmd::run(Command::new("gzip").args(["-9n"]).arg(page?.path()))?;
    }
    Ok(())
}

/// DEBIAN/control.
fn control(version: &str, architecture: &str, staging: &Path) -> anyhow::Result<String> {
    let kib = du_kib(staging)?;
    Ok(format!(
        "Package: {PACKAGE}\n\
         Version: {version}\n\
         Architecture: {architecture}\n\
         Maintainer: {MAINTAINER}\n\
         Installed-Size: {kib}\n\
         Depends: libc6 (>= 2.34), nftables\n\
         Section: net\n\
         Priority: optional\n\
         Description: every internet uplink for every TCP connection (MPTCP gateway)\n \
         A gateway for a network with several internet uplinks: LAN TCP flows are\n \
         redirected in the kernel with eBPF and spliced onto Multipath TCP\n \
         connections to a remote converter (RFC 8803), which carries them on to\n \
         their destinations. One binary for both roles, with systemd units\n \
         (mptcp-gateway, mptcp-converter) and sample configs in /etc/mptcp-gateway.\n"
    ))
}

/// DEBIAN/md5sums, for `dpkg --verify`: every file but the conffiles (dpkg records
/// theirs itself) and DEBIAN/, by path relative to the root, as dh_md5sums makes it.
fn md5sums(staging: &Path) -> anyhow::Result<String> {
    let mut files = Vec::new();
    for top in fs::read_dir(staging)? {
        let top = top?.path();
        if !top.ends_with("DEBIAN") && !top.ends_with("etc") {
            files_under(&top, &mut files)?;
        }
    }
    let relative = files
        .iter()
        .map(|file| file.strip_prefix(staging))
        .collect::<Result<Vec<_>, _>>()?;
    output(Command::new("md5sum").current_dir(staging).args(relative)).map(|sums| sums + "\n")
}

/// Appends the files under `dir` (or `dir` itself, a file) to `files`, sorted.
fn files_under(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if !dir.is_dir() {
        files.push(dir.to_owned());
        return Ok(());
    }
    let mut entries = fs::read_dir(dir)?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort();
    for entry in entries {
        files_under(&entry, files)?;
    }
    Ok(())
}

/// The staged tree's size in KiB, as Installed-Size counts it.
fn du_kib(dir: &Path) -> anyhow::Result<u64> {
    let said = output(Command::new("du").args(["-sk"]).arg(dir))?;
    said.split_whitespace()
        .next()
        .and_then(|kib| kib.parse().ok())
        .with_context(|| format!("du said {said:?}"))
}

/// `systemd-analyze verify` of the staged units, where systemd-analyze exists.
pub fn verify_units(root: &Path) -> anyhow::Result<()> {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("systemd-analyze not found: the units are not verified");
        return Ok(());
    }
    for unit in UNITS {
        let path = root.join("usr/lib/systemd/system").join(unit);
        let verified = Command::new("systemd-analyze")
            .args(["verify", "--man=no", "--recursive-errors=no"])
            .arg(format!("--root={}", root.display()))
            .arg(&path)
            .output()
            .context("cannot run systemd-analyze")?;
        let said = String::from_utf8_lossy(&verified.stderr);
        anyhow::ensure!(
            verified.status.success() && said.trim().is_empty(),
            "systemd-analyze verify {unit}: {said}"
        );
    }
    Ok(())
}

/// What `command` printed, trimmed; an error if it failed.
fn output(command: &mut Command) -> anyhow::Result<String> {
    let done = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    anyhow::ensure!(
        done.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    Ok(String::from_utf8_lossy(&done.stdout).trim().to_owned())
}
