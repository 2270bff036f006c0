//! Helpers shared by the mount tests: running commands with timeouts, and
//! a mount [`Fixture`] that unmounts (killing a stuck daemon if need be) on
//! drop, with a watchdog that kills the daemon of a test running past its
//! deadline (a dead daemon makes every stuck call fail with ENOTCONN), so a
//! broken mount never hangs the run.
//!
//! Each test binary uses a different subset.
#![allow(dead_code, unused_macros)]

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_arborfs");
/// Longest a whole test may run before its daemon is killed.
pub const TEST_DEADLINE: Duration = Duration::from_secs(120);
pub const WAIT: Duration = Duration::from_secs(30);

pub fn fuse_usable() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok()
        && (root
            || Path::new("/usr/bin/fusermount3").exists()
            || Path::new("/bin/fusermount3").exists());
    if !ok {
        eprintln!("skipping: /dev/fuse is not usable here");
    }
    ok
}

macro_rules! require_fuse {
    () => {
        if !$crate::common::fuse_usable() {
            // CI installs and can use FUSE: there a missing FUSE is a failure.
            assert!(std::env::var_os("CI").is_none(), "FUSE is not usable on CI");
            return;
        }
    };
}

/// Skips a test that needs root (`$why` says for what), except on CI,
/// which runs as root: there a non-root run is a failure, not a skip.
macro_rules! require_root {
    ($why:expr) => {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var_os("CI").is_none(), "not root on CI");
            eprintln!("skipped: {} needs root", $why);
            return;
        }
    };
}

pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a command to completion, killing it after `timeout`.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Out {
    let dir = tempfile::tempdir().unwrap();
    let (o, e) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(&o).unwrap())
        .stderr(fs::File::create(&e).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let status = wait_child(&mut child, timeout).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} did not finish within {timeout:?}");
    });
    Out {
        status,
        stdout: fs::read_to_string(o).unwrap(),
        stderr: fs::read_to_string(e).unwrap(),
    }
}

pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn arborfs(args: &[&str]) -> Out {
    run_timeout(Command::new(BIN).args(args), WAIT)
}

pub fn mount_entry(mnt: &Path) -> Option<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let m = mnt.to_str().unwrap();
    text.lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(m))
        .map(str::to_string)
}

pub fn is_mounted(mnt: &Path) -> bool {
    mount_entry(mnt).is_some_and(|l| l.contains(" - fuse.arborfs "))
}

/// Pids of processes with `arg` on their command line (the daemons of one
/// test's mount point, which is unique).
pub fn pids_with_arg(arg: &Path) -> Vec<i32> {
    let mut v = Vec::new();
    let me = std::process::id() as i32;
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(cmd) = fs::read(e.path().join("cmdline"))
            && cmd
                .split(|&b| b == 0)
                .any(|a| a == arg.as_os_str().as_bytes())
        {
            v.push(pid);
        }
    }
    v
}

pub fn kill_daemons(mnt: &Path) {
    for pid in pids_with_arg(mnt) {
        // SAFETY: sending a signal has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = Command::new("umount")
        .arg("-l")
        .arg(mnt)
        .stderr(Stdio::null())
        .status();
}

/// One image and mount point in a temporary directory; unmounts (and, if
/// need be, kills the daemon) on drop.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub image: PathBuf,
    pub mnt: PathBuf,
    /// The `-f` daemon, when mounted in the foreground.
    pub child: Option<Child>,
    watchdog: Option<mpsc::Sender<()>>,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with_deadline(TEST_DEADLINE)
    }

    /// A fixture whose watchdog fires after `deadline` instead of
    /// [`TEST_DEADLINE`].
    pub fn with_deadline(deadline: Duration) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("img");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let mnt = mnt.canonicalize().unwrap();
        let (tx, rx) = mpsc::channel::<()>();
        let m = mnt.clone();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(deadline) {
                eprintln!(
                    "watchdog: test ran over {deadline:?}; killing the daemon of {}",
                    m.display()
                );
                kill_daemons(&m);
            }
        });
        Fixture {
            _dir: dir,
            image,
            mnt,
            child: None,
            watchdog: Some(tx),
        }
    }

    pub fn image(&self) -> &str {
        self.image.to_str().unwrap()
    }

    pub fn mnt(&self) -> &str {
        self.mnt.to_str().unwrap()
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Mounts in the foreground (`-f`) as a child process; waits until the
    /// mount is live.
    pub fn mount_fg(&mut self, opts: &str) {
        assert!(self.child.is_none());
        let mut child = Command::new(BIN)
            .args(["mount", "-f", "-o", opts, self.image(), self.mnt()])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + WAIT;
        while !is_mounted(&self.mnt) {
            if let Some(s) = child.try_wait().unwrap() {
                panic!("arborfs mount -f exited with {s} before the mount was live");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mount did not appear within {WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// Mounts as a daemon; returns when `arborfs mount` has exited.
    pub fn mount_daemon(&self, opts: &str) -> Out {
        arborfs(&["mount", "-o", opts, self.image(), self.mnt()])
    }

    /// `arborfs umount`, then the foreground daemon (if any) must exit 0.
    pub fn umount(&mut self) {
        let out = arborfs(&["umount", self.mnt()]);
        assert!(
            out.status.success(),
            "arborfs umount failed: {}",
            out.stderr
        );
        assert!(!is_mounted(&self.mnt));
        self.reap_child();
    }

    /// Kills the `-f` daemon with SIGKILL (a crash) and detaches the dead
    /// mount, so the image can be mounted again.
    pub fn kill_9(&mut self) {
        let mut child = self.child.take().expect("mounted with mount_fg");
        child.kill().unwrap();
        wait_child(&mut child, WAIT).expect("killed daemon did not exit");
        let _ = run_timeout(Command::new("umount").arg("-l").arg(&self.mnt), WAIT);
        assert!(!is_mounted(&self.mnt));
    }

    pub fn reap_child(&mut self) {
        if let Some(mut c) = self.child.take() {
            let s = wait_child(&mut c, WAIT).unwrap_or_else(|| {
                let _ = c.kill();
                let _ = c.wait();
                panic!("daemon did not exit within {WAIT:?} after the unmount");
            });
            assert!(s.success(), "daemon exited with {s}");
        }
    }

    /// `arborfs fsck -n` of the (unmounted) image must exit 0.
    pub fn assert_fsck_clean(&self, after: &str) {
        let out = arborfs(&["fsck", "-n", self.image()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "fsck -n after {after}: {}{}",
            out.stdout,
            out.stderr
        );
    }

    pub fn assert_clean(&self) {
        let out = arborfs(&["show-super", "--json", self.image()]);
        assert!(out.status.success(), "{}", out.stderr);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(
            v["clean"],
            serde_json::Value::Bool(true),
            "image not clean after unmount"
        );
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = run_timeout(
                Command::new("umount").arg(&self.mnt),
                Duration::from_secs(10),
            );
        }
        if let Some(mut c) = self.child.take()
            && wait_child(&mut c, Duration::from_secs(10)).is_none()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.mnt) || !pids_with_arg(&self.mnt).is_empty() {
            kill_daemons(&self.mnt);
        }
        drop(self.watchdog.take());
    }
}
