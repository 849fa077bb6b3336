//! The standard Prometheus `process_*` metrics, read from `/proc/self` at scrape time.
//!
//! Nothing is sampled in the background: each scrape reads `/proc/self/stat`, `/proc/stat`
//! (boot time), `/proc/self/limits` and lists `/proc/self/fd`, on whatever thread encodes the
//! registry (the control runtime in the proxies). A file that cannot be read or parsed leaves
//! its metrics out of that scrape rather than failing it.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Linux's `USER_HZ` when `sysconf` cannot say: the unit of the CPU times in `/proc`.
const DEFAULT_CLOCK_TICKS: u64 = 100;
/// The page size when `sysconf` cannot say.
const DEFAULT_PAGE_SIZE: u64 = 4096;

/// What `/proc/self/stat` says about the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Threads in the process.
    pub threads: u64,
    /// Start time, in clock ticks after boot.
    pub start_ticks: u64,
    /// Virtual memory size, in bytes.
    pub virtual_bytes: u64,
    /// Resident set size, in pages.
    pub rss_pages: u64,
}

/// Parses the one line of `/proc/<pid>/stat`. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from its closing parenthesis.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let after_comm = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is index 0 here; `proc(5)` numbers fields from 1.
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        threads: field(20)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        rss_pages: field(24)?,
    })
}

/// The boot time (unix seconds): the `btime` line of `/proc/stat`.
pub fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime"))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit on open files from `/proc/<pid>/limits`; `None` when unlimited or absent.
pub fn parse_max_fds(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn sysconf_or(var: nix::unistd::SysconfVar, default: u64) -> u64 {
    match nix::unistd::sysconf(var) {
        Ok(Some(v)) if v > 0 => v as u64,
        _ => default,
    }
}

/// Encodes the `process_*` metrics of the calling process on every scrape. Register it with
/// [`crate::metrics::register_process`].
#[derive(Debug, Clone, Copy)]
pub struct ProcessCollector {
    clock_ticks: u64,
    page_size: u64,
}

impl Default for ProcessCollector {
    fn default() -> Self {
        ProcessCollector {
            clock_ticks: sysconf_or(nix::unistd::SysconfVar::CLK_TCK, DEFAULT_CLOCK_TICKS),
            page_size: sysconf_or(nix::unistd::SysconfVar::PAGE_SIZE, DEFAULT_PAGE_SIZE),
        }
    }
}

fn read(path: &str) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) => {
            tracing::debug!(path, error = %e, "process metrics: cannot read");
            None
        }
    }
}

fn open_fds() -> Option<u64> {
    match std::fs::read_dir("/proc/self/fd") {
        // The listing's own fd is among them, as in the Go and Python clients.
        Ok(dir) => Some(dir.count() as u64),
        Err(e) => {
            tracing::debug!(error = %e, "process metrics: cannot list /proc/self/fd");
            None
        }
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: f64,
) -> std::fmt::Result {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let ticks = self.clock_ticks as f64;
        if let Some(stat) = read("/proc/self/stat").as_deref().and_then(parse_stat) {
            let cpu = ConstCounter::new(stat.cpu_ticks as f64 / ticks);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                cpu.metric_type(),
            )?)?;
            let rss = (stat.rss_pages * self.page_size) as f64;
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                rss,
            )?;
            gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                stat.virtual_bytes as f64,
            )?;
            gauge(
                &mut encoder,
                "process_threads",
                "Number of OS threads in the process",
                stat.threads as f64,
            )?;
            if let Some(boot) = read("/proc/stat").as_deref().and_then(parse_boot_time) {
                let start = boot as f64 + stat.start_ticks as f64 / ticks;
                gauge(
                    &mut encoder,
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds",
                    start,
                )?;
            }
        }
        if let Some(n) = open_fds() {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors",
                n as f64,
            )?;
        }
        if let Some(max) = read("/proc/self/limits").as_deref().and_then(parse_max_fds) {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors",
                max as f64,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name_even_with_spaces_in_it() {
        // Fields 3.. of a real line, with a command name holding ") (" to trip naive parsers.
        let line = "4242 (my (weird) cmd) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 50 0 0 20 0 7 0 98765 123456789 2048 18446744073709551615";
        let stat = parse_stat(line).expect("parses");
        assert_eq!(
            stat,
            Stat {
                cpu_ticks: 300,
                threads: 7,
                start_ticks: 98765,
                virtual_bytes: 123456789,
                rss_pages: 2048,
            }
        );
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn boot_time_and_fd_limit_are_read_from_their_lines() {
        let stat = "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n";
        assert_eq!(parse_boot_time(stat), Some(1_700_000_000));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             63452                63452                processes\n\
                      Max open files            1048576              1048576              files\n";
        assert_eq!(parse_max_fds(limits), Some(1_048_576));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_fds(unlimited), None);
    }

    #[test]
    fn every_process_metric_is_exported_with_its_standard_name() {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(ProcessCollector::default()));
        let text = crate::metrics::encode(&registry);
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
            "process_threads ",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
        let start = text
            .lines()
            .find_map(|l| l.strip_prefix("process_start_time_seconds "))
            .and_then(|v| v.parse::<f64>().ok())
            .expect("start time");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        assert!(
            start > 1.6e9 && start <= now + 1.0,
            "start {start}, now {now}"
        );
    }
}
