//! The household's status page (`--status`), in a real browser: Debian's Chromium,
//! headless, on the LAN host, during a download through the gateway.

use std::{
    fs,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use mptcp_tests::{
    TempDir,
    browser::Browser,
    random_bytes, require_root,
    testbed::{Interception, SERVER, Testbed, Uplink},
};

/// Where the gateway serves the page: its LAN address.
const STATUS: &str = "192.168.50.1:8080";

/// Polls `script` (a function body returning a boolean) in the page every 100 ms until
/// it returns true; how long that took, or `None` after `patience`.
fn wait_in_page(browser: &Browser, script: &str, patience: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < patience {
        if browser.eval(script).unwrap() == serde_json::Value::Bool(true) {
            return Some(started.elapsed());
        }
        thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn the_status_page_shows_both_uplinks_a_dead_one_and_the_flow_in_a_browser() {
    require_root();
    let dir = TempDir::new("status").unwrap();
    let mut testbed =
        Testbed::with_bare_uplinks("status", &[Uplink::htb(20), Uplink::htb(20)]).unwrap();
    testbed.start_converter(dir.path(), &[]).unwrap();
    let gateway_args = [
        "--uplink",
        "up1",
        "--uplink",
        "up2,next-hop=10.0.2.2",
        "--status",
        STATUS,
    ];
    testbed
        .start_gateway_intercepting(dir.path(), Interception::Ebpf, &gateway_args)
        .unwrap();
    testbed.wait_uplinks_up().unwrap();

    // A long download through the gateway: 40 Mbit/s for about 25 s.
    let served = dir.path().join("www");
    fs::create_dir(&served).unwrap();
    fs::write(served.join("file"), random_bytes(128 << 20)).unwrap();
    testbed
        .start_http_server(&served, &dir.path().join("http.log"))
        .unwrap();
    let mut curl = testbed
        .client
        .command("curl")
        .args(["--silent", "--output", "/dev/null", "--max-time", "60"])
        .arg(format!("http://{SERVER}/file"))
        .spawn()
        .unwrap();

    let browser = Browser::start(&testbed.client, dir.path()).unwrap();
    browser.open(&format!("http://{STATUS}/")).unwrap();
    // Both uplinks, up, each carrying part of the download.
    let both_busy = r#"
        const cards = [...document.querySelectorAll(".uplink")];
        return cards.length === 2 && cards.every((card) =>
            card.dataset.state === "up" && Number(card.dataset.rateDown) > 0);"#;
    let took = wait_in_page(&browser, both_busy, Duration::from_secs(3));
    let page = || browser.eval("return document.body.innerText;").unwrap();
    assert!(
        took.is_some(),
        "not both uplinks busy within 3 s:\n{}",
        page()
    );
    println!("both uplinks with a rate after {took:?}");
    // The download, in the flow table.
    let flow_listed = format!(
        r##"return [...document.querySelectorAll("#flows tr")].some((row) =>
            row.dataset.destination === "{SERVER}:80"
            && row.dataset.client.startsWith("192.168.50.2:")
            && row.cells[0].textContent === "192.168.50.2");"##
    );
    assert!(
        wait_in_page(&browser, &flow_listed, Duration::from_secs(3)).is_some(),
        "the download is not listed:\n{}",
        page()
    );

    // A few seconds of graph, for the README's picture.
    thread::sleep(Duration::from_secs(8));
    let screenshot = screenshot_path();
    browser.screenshot(&screenshot).unwrap();
    println!("screenshot: {}", screenshot.display());
    let png = fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");

    // A line that dies silently turns down on the page within 5 s.
    testbed.silence_uplink(2).unwrap();
    let up2_down = r#"
        const card = document.querySelector('.uplink[data-uplink="up2"]');
        return card !== null && card.dataset.state === "down";"#;
    let took = wait_in_page(&browser, up2_down, Duration::from_secs(5));
    assert!(took.is_some(), "up2 not down within 5 s:\n{}", page());
    println!("up2 shown down after {took:?}");

    let errors = browser.console_errors().unwrap();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    let _ = curl.kill();
    let _ = curl.wait();
}

/// Where the test leaves its screenshot: target/status-page.png.
fn screenshot_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    fs::create_dir_all(&target).unwrap();
    target.join("status-page.png")
}
