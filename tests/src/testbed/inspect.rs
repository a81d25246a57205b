//! What a running gateway says about itself, through the inspection commands of
//! `mptcp-user` (`flows`, `uplinks`, ...) run on the gateway host.

use std::time::Duration;

use anyhow::Context as _;

use super::Testbed;

impl Testbed {
    /// `mptcp-user uplinks --json`: (interface, state) of each uplink; none when no
    /// gateway runs.
    pub fn uplink_states(&self) -> Vec<(String, String)> {
        let output = self.gateway_cli(&["uplinks", "--json"]).unwrap();
        let rows: Vec<serde_json::Value> =
            serde_json::from_slice(&output.stdout).unwrap_or_default();
        rows.iter()
            .map(|row| {
                (
                    row["interface"].as_str().unwrap_or_default().to_owned(),
                    row["health"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Waits (15 s at most) until the running gateway has every testbed uplink, each
    /// `up`.
    pub fn wait_uplinks_up(&self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let states = self.uplink_states();
            if states.len() == self.uplinks.len() && states.iter().all(|(_, state)| state == "up") {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!("the gateway's uplinks are not all up: {states:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `mptcp-user ARGS --pin-path <ours>` on the gateway host (the inspection and
    /// policy commands), returning its output whatever its exit status.
    pub fn gateway_cli(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let binary = crate::mptcp_user_bin();
        self.gateway
            .host_mounts_command(&binary.to_string_lossy())
            .args(args)
            .args(["--pin-path", &self.pin_path()])
            .output()
            .context("running mptcp-user")
    }

    /// [`Self::gateway_cli`], which must succeed; its output.
    ///
    /// # Panics
    /// When it fails, with what it said.
    pub fn gateway_cli_ok(&self, args: &[&str]) -> String {
        let output = self.gateway_cli(args).unwrap();
        assert!(
            output.status.success(),
            "mptcp-user {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The running gateway's flows, as `mptcp-user flows --json` lists them.
    ///
    /// # Panics
    /// When the listing fails or is not JSON.
    pub fn flows(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.gateway_cli_ok(&["flows", "--json"]))
            .expect("flows --json is JSON")
    }

    /// Waits (at most `timeout`) until the gateway lists a live flow to `destination`
    /// (`address:port`) with a subflow over every uplink, each having carried bytes from
    /// the flow's server (down for a LAN host's flow, up for an inbound one to a LAN
    /// server): the flow is under way on all of them. Returns that flow's listing.
    pub fn wait_for_flow_on_every_uplink(
        &self,
        destination: &str,
        timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let flows = self.flows();
            let busy = flows.iter().find(|flow| {
                let from_server = if flow["direction"] == "in" {
                    "bytes_up"
                } else {
                    "bytes_down"
                };
                flow["destination"] == destination
                    && flow["subflows"].as_array().is_some_and(|subflows| {
                        subflows.len() >= self.uplinks.len()
                            && subflows
                                .iter()
                                .all(|subflow| subflow[from_server].as_u64() > Some(0))
                    })
            });
            if let Some(flow) = busy {
                return Ok(flow.clone());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "no flow to {destination} busy on every uplink after {timeout:?}: {flows:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
