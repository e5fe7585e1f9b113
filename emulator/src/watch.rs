//! `emulator up --watch`: edit a handler and the running system serves the
//! new code. A change to the workspace's sources starts a `cargo build`
//! (cargo's own incremental build: only what the change affects is compiled
//! again) of what runs ([`Target`]):
//! - with `--runtime-api`, the functions' binaries (`cargo build --bin F ...`);
//!   each function whose binary the build replaced is swapped
//!   ([`crate::runtime::Pool::retire`]): new invocations start the new binary,
//!   invocations under way finish on the old one, a stream source's consumer
//!   finishes and acknowledges its batch and gives up its leases before the
//!   new one takes them; HTTP requests during the swap wait for a new
//!   instance's cold start;
//! - in-process, the emulator's own binary, whose new build replaces the
//!   emulator process behind [`crate::supervise`]'s proxy.
//!
//! Either way no request is refused, and a failed build prints the
//! compiler's errors and leaves the old code serving.

#![allow(clippy::print_stdout)] // `up`'s reports go to stdout, with its banner.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use notify::Watcher as _;

use crate::functions::{Functions, Runner};

/// How long the sources must be quiet before a build starts (an editor's
/// save is often several writes).
const QUIET: Duration = Duration::from_millis(300);

/// Whether a change to `path` (under `root`) can change a binary.
pub fn relevant(root: &Path, path: &Path) -> bool {
    let relative = path.strip_prefix(root).unwrap_or(path);
    let first = relative
        .components()
        .next()
        .and_then(|c| c.as_os_str().to_str());
    if matches!(first, Some("target" | ".git")) {
        return false;
    }
    let name = relative
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    name == "Cargo.lock"
        || [".rs", ".toml", ".sql"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// A binary as the file system has it: changed when either changes.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Every function run as a process, with its binary's stamp.
fn stamps(functions: &Functions) -> BTreeMap<String, (PathBuf, Stamp)> {
    functions
        .iter()
        .filter_map(|f| match &f.runner {
            Runner::Process(pool) => {
                let binary = pool.spec().binary.clone();
                let now = stamp(&binary);
                Some((f.spec.logical_id.clone(), (binary, now)))
            }
            Runner::Linked(_) => None,
        })
        .collect()
}

/// The functions whose binary changed between `before` and `after`.
pub fn changed(
    before: &BTreeMap<String, (PathBuf, Stamp)>,
    after: &BTreeMap<String, (PathBuf, Stamp)>,
) -> Vec<String> {
    after
        .iter()
        .filter(|(id, (_, now))| before.get(*id).is_none_or(|(_, then)| then != now))
        .map(|(id, _)| id.clone())
        .collect()
}

/// What one reload did.
#[derive(Debug)]
pub struct Reload {
    pub build: Duration,
    pub swapped: Vec<String>,
    /// The compiler's output when the build failed.
    pub failed: Option<String>,
}

impl Reload {
    fn swapped(build: Duration, swapped: Vec<String>) -> Self {
        Self {
            build,
            swapped,
            failed: None,
        }
    }

    /// A build that failed, with the compiler's errors.
    fn failed(build: Duration, cargo: &std::process::Output) -> Self {
        Self {
            build,
            swapped: Vec::new(),
            failed: Some(String::from_utf8_lossy(&cargo.stderr).into_owned()),
        }
    }
}

/// What `--watch` builds and swaps.
#[derive(Debug, Clone)]
pub enum Target {
    /// `--runtime-api`: the functions' processes.
    Processes { functions: Arc<Functions> },
    /// In-process: the emulator's own binary, run behind the supervisor.
    Emulator(Arc<crate::supervise::Supervisor>),
}

/// `cargo build` of `binaries` at `root` (--release for a release build), at
/// a low priority where `nice` exists: the running system keeps its speed
/// while the compiler works.
async fn cargo_build(
    root: &Path,
    package: Option<&str>,
    binaries: impl IntoIterator<Item = &Path>,
) -> anyhow::Result<std::process::Output> {
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cargo = if Path::new("/usr/bin/nice").is_file() {
        let mut nice = tokio::process::Command::new("/usr/bin/nice");
        nice.args(["-n", "19", &cargo_bin]);
        nice
    } else {
        tokio::process::Command::new(&cargo_bin)
    };
    cargo.arg("build").current_dir(root).kill_on_drop(true);
    if let Some(package) = package {
        cargo.args(["--package", package]);
    }
    let mut release = false;
    for binary in binaries {
        if let Some(name) = binary.file_name().and_then(|n| n.to_str()) {
            cargo.args(["--bin", name]);
        }
        release |= binary.parent().is_some_and(|dir| dir.ends_with("release"));
    }
    if release {
        cargo.arg("--release");
    }
    cargo
        .output()
        .await
        .context("running cargo build (is cargo on PATH?)")
}

/// Builds what `target` runs and swaps what changed.
pub async fn reload(root: &Path, target: &Target) -> anyhow::Result<Reload> {
    match target {
        Target::Processes { functions, .. } => reload_processes(root, functions).await,
        Target::Emulator(supervisor) => reload_emulator(root, supervisor).await,
    }
}

/// Builds the emulator's binary; when it changed, swaps the emulator process.
async fn reload_emulator(
    root: &Path,
    supervisor: &crate::supervise::Supervisor,
) -> anyhow::Result<Reload> {
    let exe = supervisor.exe();
    let before = stamp(exe);
    let began = Instant::now();
    let output = cargo_build(root, supervisor.package(), [exe]).await?;
    let build = began.elapsed();
    if !output.status.success() {
        return Ok(Reload::failed(build, &output));
    }
    if stamp(exe) == before {
        return Ok(Reload::swapped(build, Vec::new()));
    }
    supervisor.swap().await?;
    Ok(Reload::swapped(
        build,
        vec!["the in-process functions".to_owned()],
    ))
}

/// Builds the functions' binaries (not the emulator running this) and swaps
/// the functions whose binaries changed.
async fn reload_processes(root: &Path, functions: &Functions) -> anyhow::Result<Reload> {
    let before = stamps(functions);
    let began = Instant::now();
    let output = cargo_build(
        root,
        None,
        before.values().map(|(binary, _)| binary.as_path()),
    )
    .await?;
    let build = began.elapsed();
    if !output.status.success() {
        return Ok(Reload::failed(build, &output));
    }
    let swapped = changed(&before, &stamps(functions));
    for id in &swapped {
        if let Some(function) = functions.get(id) {
            if let Runner::Process(pool) = &function.runner {
                let retired = pool.retire(function.spec.stream_source().is_some());
                tracing::debug!(function = %id, retired, "swapped");
            }
        }
    }
    Ok(Reload::swapped(build, swapped))
}

/// Watches `root` until `stop` and reloads on every change; reports on stdout.
pub async fn run(
    root: PathBuf,
    target: Target,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let filter_root = root.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            for path in event.paths {
                if relevant(&filter_root, &path) {
                    let _ = tx.send(path);
                }
            }
        }
    })
    .context("watching the sources")?;
    // The root's own files, and every directory under it but the build's
    // output and git's: watching `target/` would cost a watch per directory
    // of it and wake on every file a build writes.
    watcher
        .watch(&root, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", root.display()))?;
    for entry in std::fs::read_dir(&root)?.flatten() {
        let path = entry.path();
        let skip = matches!(
            path.file_name().and_then(|n| n.to_str()),
            Some("target" | ".git")
        );
        if path.is_dir() && !skip {
            watcher
                .watch(&path, notify::RecursiveMode::Recursive)
                .with_context(|| format!("watching {}", path.display()))?;
        }
    }
    println!("Watching {} for changes (--watch).", root.display());
    loop {
        let first = tokio::select! {
            path = rx.recv() => path,
            _ = stop.changed() => None,
        };
        let Some(first) = first else { return Ok(()) };
        let mut paths = BTreeSet::from([first]);
        while let Ok(Some(path)) = tokio::time::timeout(QUIET, rx.recv()).await {
            paths.insert(path);
        }
        let names: Vec<String> = paths
            .iter()
            .map(|p| p.strip_prefix(&root).unwrap_or(p).display().to_string())
            .collect();
        println!("Reload: {} changed; cargo build ...", names.join(", "));
        let began = Instant::now();
        let reloaded = tokio::select! {
            reloaded = reload(&root, &target) => reloaded,
            _ = stop.changed() => return Ok(()),
        };
        match reloaded {
            Ok(Reload {
                build,
                failed: Some(errors),
                ..
            }) => {
                println!(
                    "Build failed after {} ms; the old code keeps serving:\n{errors}",
                    build.as_millis()
                );
            }
            Ok(Reload { build, swapped, .. }) if swapped.is_empty() => {
                println!("Built in {} ms; no binary changed.", build.as_millis());
            }
            Ok(Reload { build, swapped, .. }) => {
                println!(
                    "Reloaded {} in {} ms (cargo build {} ms, swap {} ms): new invocations run the new code.",
                    swapped.join(", "),
                    began.elapsed().as_millis(),
                    build.as_millis(),
                    (began.elapsed() - build).as_millis()
                );
            }
            Err(e) => println!("Reload failed: {e:#}; the old code keeps serving."),
        }
        // Changes made during the build start the next one.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_count_and_build_output_does_not() {
        let root = Path::new("/w");
        for path in [
            "/w/functions/create-order/src/lib.rs",
            "/w/shared/Cargo.toml",
            "/w/Cargo.lock",
            "/w/services/orders/migrations/1_x.sql",
        ] {
            assert!(relevant(root, Path::new(path)), "{path}");
        }
        for path in [
            "/w/target/debug/create-order",
            "/w/target/debug/deps/x.rs",
            "/w/.git/index",
            "/w/functions/create-order/src/.lib.rs.swp",
            "/w/README.md",
        ] {
            assert!(!relevant(root, Path::new(path)), "{path}");
        }
    }

    #[test]
    fn a_function_is_swapped_when_its_binary_changed() {
        let t0 = SystemTime::UNIX_EPOCH;
        let t1 = t0 + Duration::from_secs(1);
        let entry = |stamp: Stamp| (PathBuf::from("/b"), stamp);
        let before = BTreeMap::from([
            ("A".to_owned(), entry(Some((t0, 10)))),
            ("B".to_owned(), entry(Some((t0, 10)))),
            ("C".to_owned(), entry(None)),
        ]);
        let after = BTreeMap::from([
            ("A".to_owned(), entry(Some((t1, 10)))),
            ("B".to_owned(), entry(Some((t0, 10)))),
            ("C".to_owned(), entry(Some((t1, 3)))),
        ]);
        assert_eq!(changed(&before, &after), ["A", "C"]);
    }
}
