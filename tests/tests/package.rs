//! What the package ships: it installs and purges cleanly, its units verify, and
//! their capability sets are enough for the daemons, and no more than they need; and
//! lintian, Debian's package checker, finds no error in it. The arm64 package runs
//! under qemu-user.

use std::{
    fs,
    io::Read as _,
    net::TcpStream,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use mptcp_tests::{
    TempDir,
    greeting::GreetingServer,
    mptcp_user_deb, mptcp_user_deb_for,
    netns::{Netns, run_in},
    require_root,
    testbed::{CONVERTER_TOWARD_SERVER, Interception, SERVER, Testbed, Uplink, daemon_log},
};

/// Port of the server's greeting server: it answers with the address it saw.
const GREETING_PORT: u16 = 7000;

/// The repository's dist/ directory.
fn dist() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dist")
}

/// The CapabilityBoundingSet of the unit `name` in dist/systemd.
fn unit_capabilities(name: &str) -> Vec<String> {
    let unit = fs::read_to_string(dist().join("systemd").join(name)).unwrap();
    unit.lines()
        .find_map(|line| line.strip_prefix("CapabilityBoundingSet="))
        .unwrap_or_else(|| panic!("{name} has no CapabilityBoundingSet"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// `capabilities` but `dropped`.
fn without(capabilities: &[String], dropped: &str) -> Vec<String> {
    capabilities
        .iter()
        .filter(|name| *name != dropped)
        .cloned()
        .collect()
}

/// Starts both daemons with `gateway` and `converter` capabilities; whether the gateway
/// became ready and carried a flow through the converter, with both logs.
fn run_with(gateway: &[String], converter: &[String]) -> (anyhow::Result<()>, String, String) {
    let dir = TempDir::new("package-caps").unwrap();
    let mut testbed = Testbed::new("caps", &[Uplink::htb(50), Uplink::htb(50)]).unwrap();
    let converter: Vec<&str> = converter.iter().map(String::as_str).collect();
    testbed.limit_daemon_capabilities(&converter);
    let converter_started = testbed.start_converter(dir.path(), &[]);
    let gateway: Vec<&str> = gateway.iter().map(String::as_str).collect();
    testbed.limit_daemon_capabilities(&gateway);
    let _greeting = GreetingServer::start(&testbed.server, GREETING_PORT).unwrap();
    let started = converter_started
        .and_then(|()| testbed.start_gateway_intercepting(dir.path(), Interception::Ebpf, &[]));
    // A LAN flow: the server sees the converter's address if it went through it.
    let result = started.and_then(|()| {
        let seen = run_in(&testbed.client, || -> anyhow::Result<String> {
            let mut stream = TcpStream::connect((SERVER, GREETING_PORT))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut seen = String::new();
            stream.read_to_string(&mut seen)?;
            Ok(seen.trim().to_owned())
        })?;
        anyhow::ensure!(
            seen == CONVERTER_TOWARD_SERVER,
            "the server saw {seen}, not the converter"
        );
        Ok(())
    });
    (
        result,
        daemon_log(dir.path(), "gateway"),
        daemon_log(dir.path(), "converter"),
    )
}

#[test]
fn the_units_capabilities_are_enough_and_needed() {
    require_root();
    let gateway = unit_capabilities("mptcp-gateway.service");
    let converter = unit_capabilities("mptcp-converter.service");
    let (result, gateway_log, converter_log) = run_with(&gateway, &converter);
    assert!(
        result.is_ok(),
        "with the units' capabilities: {result:?}\ngateway:\n{gateway_log}\nconverter:\n{converter_log}"
    );
    // Everything ran, not a degraded mode.
    assert!(
        converter_log.contains("subflow tuning:"),
        "the converter could not load its sock_ops program:\n{converter_log}"
    );
    for log in [&gateway_log, &converter_log] {
        assert!(!log.contains("Operation not permitted"), "{log}");
    }

    // Each capability of the gateway's set is needed: without it, it does not start
    // or does not convert.
    for dropped in &gateway {
        let (result, log, _) = run_with(&without(&gateway, dropped), &converter);
        println!("gateway without {dropped}: {result:?}");
        assert!(
            result.is_err(),
            "the gateway works without {dropped}:\n{log}"
        );
    }
    // The converter runs without the eBPF ones, but without its subflow tuning.
    for dropped in ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"] {
        let (_, _, log) = run_with(&gateway, &without(&converter, dropped));
        assert!(
            !log.contains("subflow tuning:"),
            "the converter tunes subflows without {dropped}:\n{log}"
        );
    }
}

/// Runs `dpkg --root ROOT ARGS`, failing with what it said.
fn dpkg(root: &Path, args: &[&str]) -> Output {
    let output = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "dpkg {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn the_package_installs_verifies_and_purges_cleanly() {
    require_root();
    let package = mptcp_user_deb();
    // An empty system of its own: dpkg's database and nothing else, so the host is
    // left alone. (libc6 is the host's; the empty root does not list it.)
    let root = TempDir::new("package-root").unwrap();
    let root = root.path();
    fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    dpkg(
        root,
        &["--force-depends", "--install", &package.to_string_lossy()],
    );

    let installed = |path: &str| root.join(path.trim_start_matches('/'));
    let version = Command::new(installed("/usr/bin/mptcp-user"))
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.starts_with("mptcp-user ") && version.contains("commit"),
        "{version}"
    );
    for path in [
        "/usr/lib/systemd/system/mptcp-gateway.service",
        "/usr/lib/systemd/system/mptcp-converter.service",
        "/usr/lib/sysctl.d/60-mptcp-user.conf",
        "/etc/mptcp-gateway/gateway.toml",
        "/etc/mptcp-gateway/converter.toml",
        "/usr/share/bash-completion/completions/mptcp-user",
        "/usr/share/zsh/vendor-completions/_mptcp-user",
        "/usr/share/fish/vendor_completions.d/mptcp-user.fish",
        "/usr/share/man/man1/mptcp-user.1.gz",
        "/usr/share/man/man1/mptcp-user-speedtest.1.gz",
        "/usr/share/doc/mptcp-user/copyright",
        "/usr/share/doc/mptcp-user/changelog.gz",
    ] {
        assert!(installed(path).is_file(), "{path} was not installed");
    }
    // The sample configs are what the units start the daemons with, and they parse
    // (the converter's completely; the gateway's names interfaces this host lacks).
    let check = Command::new(installed("/usr/bin/mptcp-user"))
        .args(["config", "check"])
        .arg(installed("/etc/mptcp-gateway/converter.toml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Every file is as packaged (DEBIAN/md5sums): dpkg --verify says nothing.
    let verified = dpkg(root, &["--verify", "mptcp-user"]);
    assert!(
        verified.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    let conffiles = dpkg(root, &["--status", "mptcp-user"]);
    assert!(String::from_utf8_lossy(&conffiles.stdout).contains("/etc/mptcp-gateway/gateway.toml"));
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        for unit in ["mptcp-gateway.service", "mptcp-converter.service"] {
            let verified = Command::new("systemd-analyze")
                .args(["verify", "--man=no", "--recursive-errors=no"])
                .arg(format!("--root={}", root.display()))
                .arg(installed(&format!("/usr/lib/systemd/system/{unit}")))
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&verified.stderr);
            assert!(
                verified.status.success() && said.trim().is_empty(),
                "{unit}: {said}"
            );
        }
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI has no systemd-analyze"
        );
    }

    dpkg(root, &["--purge", "mptcp-user"]);
    let left: Vec<PathBuf> = walk(root)
        .into_iter()
        .filter(|path| !path.starts_with(root.join("var/lib/dpkg")))
        .collect();
    assert!(left.is_empty(), "left after purge: {left:?}");
}

#[test]
fn lintian_finds_no_error_in_the_package() {
    lintian_finds_no_error_in(&mptcp_user_deb());
}

/// The arm64 package, cross-built: its binary is an aarch64 one, and under qemu-user it
/// tells its version and help, checks the sample configs and makes a key; lintian finds
/// no error in the package.
#[test]
fn the_arm64_package_runs_under_qemu_and_lintian_finds_no_error_in_it() {
    require_root();
    let package = mptcp_user_deb_for("arm64");
    lintian_finds_no_error_in(&package);
    let dir = TempDir::new("arm64").unwrap();
    let root = dir.path().join("root");
    let extracted = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&package)
        .arg(&root)
        .status()
        .unwrap();
    assert!(extracted.success());
    let binary = root.join("usr/bin/mptcp-user");
    let elf = fs::read(&binary).unwrap();
    // ELF, 64-bit, machine EM_AARCH64 (183).
    assert!(elf.starts_with(b"\x7fELF\x02"), "not a 64-bit ELF");
    assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 183, "not aarch64");
    println!("arm64 binary: {} KiB", elf.len() / 1024);

    // A host with the sample gateway config's interfaces, for its check.
    let host = Netns::new(mptcp_tests::unique_name("arm64")).unwrap();
    for (i, interface) in ["br-lan", "dsl0", "lte0"].iter().enumerate() {
        let peer = format!("peer{i}");
        host.ip(&[
            "link", "add", interface, "type", "veth", "peer", "name", &peer,
        ])
        .unwrap();
    }
    let run = |args: &[&str]| {
        let output = host
            .command("qemu-aarch64-static")
            .arg(&binary)
            .args(args)
            .output()
            .expect("cannot run qemu-aarch64-static: `cargo xtask dist --arch arm64` installs it");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success(),
            "mptcp-user {args:?} under qemu:\n{said}"
        );
        said
    };
    let version = run(&["--version"]);
    assert!(
        version.starts_with(&format!("mptcp-user {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    assert!(run(&["--help"]).contains("gateway"));
    let configs = root.join("etc/mptcp-gateway");
    for (config, said) in [
        ("converter.toml", "valid converter"),
        ("gateway.toml", "valid gateway"),
    ] {
        let path = configs.join(config);
        assert!(run(&["config", "check", &path.to_string_lossy()]).contains(said));
    }
    let key = dir.path().join("key");
    run(&["keygen", &key.to_string_lossy()]);
    let metadata = fs::metadata(&key).unwrap();
    assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
    assert!(metadata.len() > 0);
}

/// Runs lintian on `package`; fails on any error, shows the warnings.
fn lintian_finds_no_error_in(package: &Path) {
    let lintian = Command::new("lintian")
        .args(["--fail-on", "error"])
        .arg(package)
        .output()
        .expect("cannot run lintian: `cargo xtask setup` installs it");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&lintian.stdout),
        String::from_utf8_lossy(&lintian.stderr)
    );
    assert!(
        lintian.status.success() && !said.lines().any(|line| line.starts_with("E:")),
        "lintian {} ({}):\n{said}",
        package.display(),
        lintian.status
    );
    // Warnings are shown, not failed on.
    println!("lintian {}:\n{said}", package.display());
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
