//! The gateway daemon.

use std::future::Future;

use anyhow::Context as _;
use aya_log::EbpfLogger;
use log::{error, info};
use tokio::signal::unix::SignalKind;

use crate::{cli::GatewayArgs, ebpf::Programs, sys::InstanceLock};

/// Runs the gateway until SIGINT or SIGTERM.
pub fn run(args: &GatewayArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("failed to start the tokio runtime")?;
    runtime.block_on(async {
        let _lock = InstanceLock::acquire(&args.pin_path)?;
        let mut programs = Programs::load()?;
        if let Some(logger) = programs.take_logger() {
            tokio::spawn(drain_ebpf_log(logger));
        }
        for cgroup in &args.cgroups {
            programs.attach_sock_ops(cgroup)?;
            info!("watching TCP connections of cgroup {}", cgroup.display());
        }
        programs.pin_maps(&args.pin_path)?;
        info!("maps pinned under {}", args.pin_path.display());
        serve(shutdown_signal()?).await;
        info!("shutting down: detaching programs and removing pins");
        drop(programs);
        Ok(())
    })
}

/// Waits for `shutdown`. The data plane will run here; the programs themselves work
/// without userspace.
async fn serve(shutdown: impl Future<Output = ()>) {
    shutdown.await;
}

/// Resolves at the first SIGINT or SIGTERM.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    let mut interrupt = tokio::signal::unix::signal(SignalKind::interrupt())
        .context("failed to listen for SIGINT")?;
    let mut terminate = tokio::signal::unix::signal(SignalKind::terminate())
        .context("failed to listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// Forwards the eBPF programs' log records to env_logger as they arrive.
async fn drain_ebpf_log(logger: EbpfLogger<&'static dyn log::Log>) {
    let mut logger = match crate::sys::register_readable(logger) {
        Ok(logger) => logger,
        Err(error) => {
            error!("cannot poll the eBPF log ring buffer: {error}");
            return;
        }
    };
    loop {
        let mut guard = match logger.readable_mut().await {
            Ok(guard) => guard,
            Err(error) => {
                error!("eBPF log ring buffer failed: {error}");
                return;
            }
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
