//! A misbehaving program for warden's integration tests, run as a command tool.
//!
//! warden-fixture args A B ...           print the argv it got, as a JSON array
//! warden-fixture fail CODE MESSAGE      write MESSAGE to stderr, exit CODE
//! warden-fixture sleep MS [PIDFILE]     write its pid to PIDFILE, sleep MS
//! warden-fixture group PIDFILE MS       start a grandchild, write both pids, sleep MS
//! warden-fixture flood BYTES            write BYTES bytes to stdout
//! warden-fixture record FILE CODE      append a line to FILE, exit CODE
//! warden-fixture connect-as UID SOCKET  become UID, send a status request to a
//!                                       control socket, print the answer line
//! warden-fixture env                    print its environment, one VAR=value a line
//! warden-fixture cwd                    print its working directory
//! warden-fixture escape HOW PIDFILE HOLD_MS
//!                                       start a sleeper that leaves the group
//!                                       (HOW: setsid, setpgid, or daemon: fork,
//!                                       setsid, fork), its stdio on /dev/null;
//!                                       write its pid, then stay HOLD_MS
//! warden-fixture leak MIB STEP_MS HOLD_MS
//!                                       allocate and touch MIB MiB, one MiB
//!                                       every STEP_MS, then hold it HOLD_MS

use std::io::Write;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let num = |i: usize| arg(i).parse::<u64>().unwrap_or(0);
    match arg(0).as_str() {
        "args" => println!("{}", serde_json::to_string(&args[1..]).unwrap()),
        "fail" => {
            eprintln!("{}", arg(2));
            std::process::exit(num(1) as i32);
        }
        "leak" => {
            let mut held: Vec<Vec<u8>> = Vec::new();
            for _ in 0..num(1) {
                // Non-zero bytes: every page is touched, so it is resident.
                held.push(vec![0x5a; 1 << 20]);
                std::thread::sleep(Duration::from_millis(num(2)));
            }
            std::thread::sleep(Duration::from_millis(num(3)));
            println!("held {} MiB", held.len());
        }
        "sleep" => {
            if let Some(file) = args.get(2) {
                std::fs::write(file, std::process::id().to_string()).unwrap();
            }
            std::thread::sleep(Duration::from_millis(num(1)));
            println!("slept");
        }
        // The grandchild is left running on purpose: warden must kill it.
        #[allow(clippy::zombie_processes)]
        "group" => {
            let me = std::env::current_exe().unwrap();
            let grandchild = std::process::Command::new(me)
                .args(["sleep", "60000"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::fs::write(
                arg(1),
                format!("{} {}", std::process::id(), grandchild.id()),
            )
            .unwrap();
            std::thread::sleep(Duration::from_millis(num(2)));
        }
        "escape" => escape(&arg(1), &arg(2), num(3)),
        "flood" => {
            let mut out = std::io::stdout().lock();
            let chunk = [b'x'; 65536];
            let mut left = num(1) as usize;
            while left > 0 {
                let n = left.min(chunk.len());
                if out.write_all(&chunk[..n]).is_err() {
                    break;
                }
                left -= n;
            }
        }
        "record" => {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(arg(1))
                .unwrap();
            writeln!(f, "run").unwrap();
            if num(2) != 0 {
                eprintln!("failing on purpose");
            }
            std::process::exit(num(2) as i32);
        }
        "connect-as" => {
            use std::io::{BufRead, Write as _};
            let uid = nix::unistd::Uid::from_raw(num(1) as u32);
            nix::unistd::setuid(uid).expect("setuid (the test runs as root)");
            match std::os::unix::net::UnixStream::connect(arg(2)) {
                Ok(mut s) => {
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let _ = s.write_all(b"{\"cmd\":\"status\"}\n");
                    let mut line = String::new();
                    let _ = std::io::BufReader::new(s).read_line(&mut line);
                    print!("{line}");
                }
                Err(e) => println!("connect failed: {e}"),
            }
        }
        "env" => {
            for (k, v) in std::env::vars() {
                println!("{k}={v}");
            }
        }
        "cwd" => println!("{}", std::env::current_dir().unwrap().display()),
        other => {
            eprintln!("warden-fixture: unknown mode `{other}`");
            std::process::exit(64);
        }
    }
}

/// A descendant that leaves its process group the way daemons and helpers
/// do, and holds none of the call's pipes: only containment can end it.
fn escape(how: &str, pidfile: &str, hold_ms: u64) {
    use nix::unistd::{fork, setpgid, setsid, ForkResult, Pid};
    // SAFETY: single-threaded so far; the children only make system calls
    // before they sleep or exit.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            match how {
                "setsid" => drop(setsid()),
                "setpgid" => drop(setpgid(Pid::from_raw(0), Pid::from_raw(0))),
                "daemon" => {
                    let _ = setsid();
                    if let ForkResult::Parent { .. } = unsafe { fork() }.expect("fork") {
                        std::process::exit(0);
                    }
                }
                other => {
                    eprintln!("warden-fixture: unknown way to escape `{other}`");
                    std::process::exit(64);
                }
            }
            let null = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .unwrap();
            for fd in 0..3 {
                // SAFETY: dup2 onto the standard descriptors of this process.
                unsafe { nix::libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) };
            }
            // Whole or not at all: the test reads it while it may be written.
            let tmp = format!("{pidfile}.tmp{}", std::process::id());
            std::fs::write(&tmp, std::process::id().to_string()).unwrap();
            std::fs::rename(&tmp, pidfile).unwrap();
            std::thread::sleep(Duration::from_secs(600));
            std::process::exit(0);
        }
        ForkResult::Parent { child } => {
            if how == "daemon" {
                // The middle process exits at once; reap it like a daemon's parent does.
                let _ = nix::sys::wait::waitpid(child, None);
            }
            let t0 = std::time::Instant::now();
            while !std::path::Path::new(pidfile).exists() && t0.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(hold_ms));
            println!("escaped");
        }
    }
}
