//! The two tokio runtimes of a proxy, as upstream ztunnel runs them: a single-threaded one on a
//! thread of its own for control work (CA client, xDS, admin endpoints, policy re-checks), and a
//! multi-threaded one for the data plane, so config work and metrics encoding never take a
//! data-plane thread.

/// The control runtime's handle (it runs until the process exits) and the data-plane runtime,
/// with `workers` threads (tokio's default, one per core, when `None`).
pub fn control_and_data(
    name: &str,
    workers: Option<u16>,
) -> std::io::Result<(tokio::runtime::Handle, tokio::runtime::Runtime)> {
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = control.handle().clone();
    std::thread::Builder::new()
        .name(format!("{name}-control"))
        .spawn(move || control.block_on(std::future::pending::<()>()))?;
    let mut data = tokio::runtime::Builder::new_multi_thread();
    data.enable_all().thread_name(format!("{name}-data"));
    if let Some(n) = workers {
        data.worker_threads(usize::from(n));
    }
    let data = data.build()?;
    Ok((handle, data))
}
