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
